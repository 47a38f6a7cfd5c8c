"""The scorer equals a brute-force per-batch autograd computation, for every kind and model."""
from __future__ import annotations

import pytest
import torch

from conftest import image_batches, tiny_cnn, tiny_llama, tiny_mistral, tiny_qwen2, token_batches
from surgery import SurgeryError, score
from surgery.saliency.losses import resolve_loss

MODELS = {
    "llama": (tiny_llama, token_batches, "causal_lm"),
    "qwen2": (tiny_qwen2, token_batches, "causal_lm"),
    "mistral": (tiny_mistral, token_batches, "causal_lm"),
    "cnn": (tiny_cnn, image_batches, "neg_ce"),
}


def brute_force(model, batches, loss, kind):
    """Per-batch gradients with torch.autograd.grad, combined in fp64 by the kind's formula."""
    fn, _ = resolve_loss(loss)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    grads = []
    for b in batches:
        g = torch.autograd.grad(fn(model, b), params, allow_unused=True)
        grads.append([torch.zeros_like(p) if x is None else x for x, p in zip(g, params)])
    out = {}
    for i, n in enumerate(names):
        stack = torch.stack([g[i].double() for g in grads])
        if kind == "grad":
            out[n] = stack.sum(0)
        elif kind == "abs_grad":
            out[n] = stack.sum(0).abs()
        elif kind == "fisher":
            out[n] = (stack**2).sum(0)
        else:
            out[n] = (params[i].detach().double() * stack.sum(0)).abs()
    return out


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("kind", ["grad", "abs_grad", "fisher", "taylor"])
def test_kind_equals_brute_force(arch, kind):
    make, data, loss = MODELS[arch]
    model, batches = make(), data()
    smap = score(model, batches, loss=loss, kind=kind, progress=False)
    ref = brute_force(model, batches, loss, kind)
    assert set(smap) == set(ref)
    assert smap.samples == sum(b[0].shape[0] if isinstance(b, tuple) else b.shape[0] for b in batches)
    assert smap.batches == len(batches)
    for n, expected in ref.items():
        got = smap[n].double()
        assert got.dtype == torch.float64 and smap[n].dtype == torch.float32
        scale = max(float(expected.abs().max()), 1e-12)
        assert float((got - expected).abs().max()) <= 1e-6 * scale, n


def test_include_exclude_and_model_state_restored(llama):
    batches = token_batches()
    for p in llama.parameters():
        p.grad = torch.full_like(p, 7.0)
    llama.model.norm.weight.requires_grad_(False)
    before = {n: (p.requires_grad, p.grad.clone()) for n, p in llama.named_parameters()}
    smap = score(llama, batches, kind="fisher", include=r"layers\.\d+\.mlp", exclude="down_proj",
                 progress=False)
    assert set(smap) == {f"model.layers.{i}.mlp.{r}_proj.weight" for i in (0, 1) for r in ("gate", "up")}
    full = score(llama, batches, kind="fisher", progress=False)
    for n in smap:  # a subset scores exactly what the full map says about it
        torch.testing.assert_close(smap[n], full[n], rtol=1e-6, atol=0)
    for n, p in llama.named_parameters():
        assert p.requires_grad == before[n][0]
        assert torch.equal(p.grad, before[n][1])


def test_offload_and_bf16_accumulate_in_fp32(llama):
    batches = token_batches()
    ref = score(llama, batches, kind="abs_grad", progress=False)
    off = score(llama, batches, kind="abs_grad", offload=True, progress=False)
    for n in ref:
        torch.testing.assert_close(off[n], ref[n], rtol=1e-5, atol=1e-9)
    bf = tiny_llama().to(torch.bfloat16)
    smap = score(bf, batches, kind="fisher", progress=False)
    assert all(t.dtype == torch.float32 for t in smap.values())
    assert all(torch.isfinite(t).all() for t in smap.values())


def test_eval_mode_is_callers(llama):
    llama.train()
    score(llama, token_batches(), kind="grad", progress=False)
    assert llama.training
    llama.eval()
    score(llama, token_batches(), kind="grad", progress=False)
    assert not llama.training


def test_empty_data_and_bad_arguments(llama):
    with pytest.raises(SurgeryError, match="empty data"):
        score(llama, [], progress=False)
    with pytest.raises(SurgeryError, match="unknown saliency kind"):
        score(llama, token_batches(), kind="hessian", progress=False)
    with pytest.raises(SurgeryError, match="unknown loss"):
        score(llama, token_batches(), loss="mse", progress=False)
    with pytest.raises(SurgeryError, match="no parameter matches"):
        score(llama, token_batches(), include="nothing_like_this", progress=False)


def test_non_finite_loss_is_refused(llama):
    def bad(model, batch):
        return model(input_ids=batch).logits.sum() * float("nan")

    with pytest.raises(SurgeryError, match="loss is nan"):
        score(llama, token_batches(), loss=bad, progress=False)


def test_callable_loss_and_max_batches(llama):
    batches = token_batches(n=6)

    def first_logit(model, batch):
        return model(input_ids=batch).logits[:, -1, 0].mean()

    smap = score(llama, batches, loss=first_logit, kind="grad", max_batches=2, progress=False)
    ref = brute_force(llama, batches[:2], first_logit, "grad")
    assert smap.loss == "first_logit" and smap.batches == 2
    for n in ref:
        assert float((smap[n].double() - ref[n]).abs().max()) <= 1e-6 * max(float(ref[n].abs().max()), 1e-12)
