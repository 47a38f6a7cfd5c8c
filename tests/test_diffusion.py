"""Unlearning a class from a class-conditional DDPM (SalUn's generation half): the objective against
a hand computation, the mask against brute-force gradients, frozen weights bit-identical, the
judge's bookkeeping, and an output folder that plain diffusers loads in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from surgery.data.images import digits
from surgery.diffusion.model import build_unet, null_class, write_diffusion
from surgery.diffusion.process import alphas_cumprod, diffusion_loss, noised_batch, sample, to_model_space
from surgery.errors import SurgeryError
from surgery.evaluate.generation import frechet_distance, generation_metrics
from surgery.unlearn import UnlearnConfig, unlearn
from surgery.unlearn.generation import esd_loss, noised_batches, relabel_loss
from surgery.unlearn.splits import class_split


def tiny_unet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_unet(10, 8, (16, 32)).eval()


@pytest.fixture(scope="module")
def digit_sets():
    train = digits("train")
    f, r = class_split(train, 3)
    return train.subset(f), train.subset(r)


def test_diffusion_loss_equals_the_ddpm_formula_by_hand():
    model = tiny_unet()
    x0 = to_model_space(digits("test").floats(slice(0, 6)))
    y = torch.arange(6)
    batch = noised_batch(x0, y, alphas_cumprod(model), torch.Generator().manual_seed(3))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # DDPM's linear schedule
    a = torch.cumprod(1 - betas, 0)[batch["timesteps"]].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0.double() + (1 - a).sqrt() * batch["noise"].double()
    assert torch.allclose(batch["noisy"].double(), x_t, atol=1e-6)
    with torch.no_grad():
        eps = model(x_t.float(), batch["timesteps"], class_labels=y).sample
        assert float(diffusion_loss(model, batch)) == pytest.approx(float(((eps - batch["noise"]) ** 2).mean()),
                                                                     rel=1e-5)


def test_relabel_and_esd_targets_by_hand():
    model, frozen = tiny_unet(0), tiny_unet(1)
    x0 = to_model_space(digits("test").floats(slice(0, 8)))
    y = torch.full((8,), 3)
    batch = noised_batch(x0, y, alphas_cumprod(model), torch.Generator().manual_seed(0))
    x, t = batch["noisy"], batch["timesteps"]
    gen = torch.Generator().manual_seed(5)
    other = (y + torch.randint(1, 10, y.shape, generator=torch.Generator().manual_seed(5))) % 10
    assert bool((other != 3).all())
    with torch.no_grad():
        eps = lambda m, c: m(x, t, class_labels=c).sample  # noqa: E731
        want = ((eps(model, y) - eps(model, other)) ** 2).mean()
        assert float(relabel_loss(model, batch, gen)) == pytest.approx(float(want), rel=1e-5)
        nxt = ((eps(model, y) - eps(model, torch.full_like(y, 4))) ** 2).mean()  # the official DDPM code: c + 1
        assert float(relabel_loss(model, batch, gen, "next")) == pytest.approx(float(nxt), rel=1e-5)
        u, c = eps(frozen, torch.full_like(y, null_class(frozen))), eps(frozen, y)
        target = u - 2.0 * (c - u)
        assert float(esd_loss(model, frozen, batch, 2.0)) == pytest.approx(float(((eps(model, y) - target) ** 2).mean()),
                                                                           rel=1e-5)


def test_salun_mask_is_the_top_of_brute_force_gradients_and_only_it_moves(digit_sets):
    forget, retain = digit_sets
    model = tiny_unet()
    cfg = UnlearnConfig(method="salun", density=0.2, batch_size=64, steps=4, optimizer="adamw", lr=1e-3,
                        weight_decay=0.01, alpha=1.0)
    from surgery.unlearn.generation import diffusion_saliency_mask

    mask = diffusion_saliency_mask(model, forget, cfg)
    grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for batch in noised_batches(forget, cfg.batch_size, cfg.seed + 7, model):
        model.zero_grad()
        diffusion_loss(model, batch).backward()
        for n, p in model.named_parameters():
            grads[n] += p.grad
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    k = int(round(0.2 * flat.numel()))
    threshold = flat.topk(k).values.min()
    chosen = sum(int(mask[n].sum()) for n in grads)
    assert chosen == k
    for n, g in grads.items():  # every selected entry is at least the k-th largest score
        assert bool((g.abs()[mask[n]] >= threshold * (1 - 1e-5)).all()), n
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = unlearn(model, cfg, forget, retain, mask=mask, progress=False)
    moved = 0
    for n, p in model.named_parameters():
        assert torch.equal(p[~mask[n]], before[n][~mask[n]]), n  # bit-identical outside the mask
        moved += int((p[mask[n]] != before[n][mask[n]]).sum())
    assert moved > 0.5 * k and result.trainable == k


def test_default_relabel_of_a_diffusion_model_is_the_next_class(digit_sets):
    """`relabel: auto` on a diffusion model is the official DDPM code's pseudo label c + 1: the same
    weights as `next` after two steps, not those of `other` (c' drawn per image)."""
    forget, retain = digit_sets
    after = {}
    for rule in ("auto", "next", "other"):
        model = tiny_unet()
        unlearn(model, UnlearnConfig(method="rl", steps=2, batch_size=32, optimizer="adamw", lr=2e-3, relabel=rule),
                forget, retain, progress=False)
        after[rule] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(after["auto"], after["next"])
    assert not torch.equal(after["auto"], after["other"])


@pytest.mark.parametrize("method", ["rl", "ga", "ft", "esd", "retrain"])
def test_every_generation_method_lowers_its_own_objective_or_trains(digit_sets, method):
    forget, retain = digit_sets
    model = tiny_unet()
    cfg = UnlearnConfig(method=method, steps=6, batch_size=32, optimizer="adamw", lr=2e-3, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = unlearn(model, cfg, forget, retain, progress=False)
    assert result.mask is None and len(result.history) >= 1
    changed = sum(int((p != before[n]).sum()) for n, p in model.named_parameters())
    assert changed > 0.5 * sum(p.numel() for p in model.parameters())


def test_frechet_distance_of_a_shift_is_its_squared_norm():
    a = np.random.default_rng(0).normal(size=(400, 6))
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0, 3.0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-4)  # 1e-6·I regularisation
    assert frechet_distance(a, a + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-5)
    b = np.random.default_rng(1).normal(size=(400, 6)) * 2.0  # Σb ≈ 4Σa: Tr(Σa + Σb − 2·2Σa) ≈ Tr(Σa) ≈ 6
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.25)


class ConstantJudge(nn.Module):
    """Always says `cls`; its features are the mean pixel."""

    def __init__(self, cls: int) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 10)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.bias[cls] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1).mean(1, keepdim=True))


@pytest.mark.parametrize("says,ua,acc", [(3, 0.0, 0.0), (5, 100.0, 100.0 / 9)])
def test_generation_metrics_bookkeeping(says, ua, acc):
    rep = generation_metrics(tiny_unet(), ConstantJudge(says), 3, digits("test"), forget_samples=20, per_class=4,
                             steps=3)
    assert rep.UA == pytest.approx(ua) and rep.retain_acc == pytest.approx(acc)
    assert rep.per_class_acc == {c: (100.0 if c == says else 0.0) for c in range(10) if c != 3}
    assert rep.retain_images.shape == (9, 4, 1, 8, 8) and rep.feature_fid >= 0


def test_sampling_is_seeded_and_guidance_matters():
    model = tiny_unet()
    labels = torch.tensor([1, 2, 3])
    a, b = sample(model, labels, steps=4, seed=1), sample(model, labels, steps=4, seed=1)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, sample(model, labels, steps=4, seed=1, guidance=0.0))


@pytest.mark.parametrize("steps", [3, 12])
def test_ddim_sampling_equals_the_update_by_hand(steps):
    """Guided DDIM with x0 clipped to [-1, 1] and ε re-derived from it, step by step by hand; a random
    UNet at guidance 3 sends x0 far outside the range, so clipping acts at every step."""
    model = tiny_unet()
    labels = torch.tensor([1, 4])
    got = sample(model, labels, steps=steps, guidance=3.0, seed=2)
    abar = alphas_cumprod(model).double()
    ts = [i * (1000 // steps) for i in range(steps)][::-1]  # diffusers' "leading" spacing
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(2)).double()
    lab = torch.cat([labels, torch.full_like(labels, null_class(model))])
    clipped = 0
    with torch.no_grad():
        for i, t in enumerate(ts):
            eps = model(torch.cat([x, x]).float(), torch.full((4,), t), class_labels=lab).sample.double()
            eps = eps[2:] + 3.0 * (eps[:2] - eps[2:])
            a, a_prev = abar[t], (abar[ts[i + 1]] if i + 1 < steps else abar[0])
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            clipped += int((x0.abs() > 1).any())
            x0 = x0.clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert clipped == steps
    torch.testing.assert_close(got, ((x + 1) / 2).clamp(0, 1).float(), atol=1e-4, rtol=0)


FRESH = """
import json, sys, torch
exec(sys.argv[1])  # the model card's loading code, as a user would paste it
batch = torch.load(sys.argv[2])
eps = model(batch["noisy"], batch["timesteps"], class_labels=batch["labels"]).sample.detach()
torch.save(eps, sys.argv[3])
print(json.dumps({"timesteps": scheduler.config.num_train_timesteps, "beta_end": scheduler.config.beta_end}))
"""


def test_unlearn_recipe_on_a_diffusion_model_reloads_in_plain_diffusers(tmp_path):
    from surgery.models import load_model
    from surgery.recipe import run_recipe
    from surgery.saliency import MaskSet

    base = tmp_path / "ddpm"
    base.mkdir()
    write_diffusion(tiny_unet(), base)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {base}\nunlearn_stage:\n  data:\n    images: digits\n    forget_class: 3\n"
                      "  unlearn_modifiers:\n    SalUnModifier: {density: 0.3, steps: 3, batch_size: 32, "
                      "optimizer: adamw, lr: 0.001, weight_decay: 0.0}\n")
    metrics = run_recipe(str(recipe), str(tmp_path / "out"))
    stage = metrics["stages"][0]
    assert stage["after"]["loss_forget"] != stage["before"]["loss_forget"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "UNet2DModel.from_pretrained(path)" in card and "library_name: diffusers" in card
    batch = noised_batch(to_model_space(digits("test").floats(slice(0, 5))), torch.arange(5),
                         alphas_cumprod(tiny_unet()), torch.Generator().manual_seed(0))
    torch.save(batch, tmp_path / "batch.pt")
    from surgery.export.card import card_code

    proc = subprocess.run([sys.executable, "-c", FRESH, card_code(card), str(tmp_path / "batch.pt"),
                           str(tmp_path / "eps.pt")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"timesteps": 1000, "beta_end": 0.02}
    model, _ = load_model(tmp_path / "out")
    with torch.no_grad():  # same weights; another process may sum convolutions in another order
        assert torch.allclose(torch.load(tmp_path / "eps.pt"),
                              model(batch["noisy"], batch["timesteps"], class_labels=batch["labels"]).sample,
                              rtol=0, atol=1e-6)
    mask, original = MaskSet.load(tmp_path / "out" / "mask.safetensors"), tiny_unet()
    mask.check_model(model)
    old = dict(original.named_parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p.detach()[~mask[n]], old[n].detach()[~mask[n]]), n


@pytest.mark.parametrize("stage,pattern", [
    ("unlearn_stage:\n  data:\n    images: digits\n    forget_fraction: 0.1\n  unlearn_modifiers:\n"
     "    SalUnModifier: {steps: 1}\n", "a diffusion model takes an unlearn_stage with images and forget_class only"),
    ("prune_stage:\n  prune_modifiers:\n    TyrPruningModifier: {sparsity: 0.5}\n",
     "a diffusion model takes an unlearn_stage"),
    ("unlearn_stage:\n  data:\n    images: digits\n    forget_class: 3\n  unlearn_modifiers:\n"
     "    UnlearnModifier: {method: npo, steps: 1}\n", "method 'npo' is not for diffusion models"),
    ("unlearn_stage:\n  data:\n    images: digits\n    forget_class: 3\n    judge: nosuch\n  unlearn_modifiers:\n"
     "    SalUnModifier: {steps: 1}\n", "judge 'nosuch' is neither a reference model nor a model folder"),
    ("unlearn_stage:\n  data:\n    images: digits\n    forget_class: 10\n  unlearn_modifiers:\n"
     "    SalUnModifier: {steps: 1}\n", "forget_class 10 is not one of the UNet's 10 classes (0–9)"),
])
def test_bad_diffusion_recipes_fail_in_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, stage, pattern):
    """…and before the model loads (the config alone says what is wrong)."""
    import surgery.diffusion.model
    from surgery.cli.main import main

    base = tmp_path / "ddpm"
    base.mkdir()
    write_diffusion(tiny_unet(), base)

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the recipe was refused")

    monkeypatch.setattr(surgery.diffusion.model, "load_diffusion", must_not_load)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {base}\n" + stage)
    capsys.readouterr()
    rc = main(["run", str(recipe), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and pattern in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddpm", "r.yaml"]


def test_a_unet_without_classes_is_refused(tmp_path):
    from diffusers import UNet2DModel

    from surgery.models import load_model

    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                norm_num_groups=8).save_pretrained(str(tmp_path / "u"))
    with pytest.raises(SurgeryError, match="without class conditioning"):
        load_model(tmp_path / "u")


def test_cli_scores_a_diffusion_model_on_its_diffusion_loss(tmp_path):
    from surgery.cli.main import main
    from surgery.saliency import SaliencyMap, score

    base = tmp_path / "ddpm"
    base.mkdir()
    write_diffusion(tiny_unet(), base)
    out = tmp_path / "map.safetensors"
    assert main(["score", "--model", str(base), "--images", "digits", "--classes", "3", "--batch-size", "16",
                 "--seed", "4", "--out", str(out)]) == 0
    data = digits("train")
    data = data.subset(torch.nonzero(data.y == 3).flatten())
    model = tiny_unet()
    want = score(model, list(noised_batches(data, 16, 4, model)), loss=diffusion_loss, progress=False)
    got = SaliencyMap.load(out)
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-5, atol=1e-9), name


def test_eval_of_a_diffusion_model_is_refused_in_one_line(tmp_path, capsys):
    from surgery.cli.main import main

    base = tmp_path / "ddpm"
    base.mkdir()
    write_diffusion(tiny_unet(), base)
    capsys.readouterr()
    assert main(["eval", "--model", str(base), "--images", "digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a diffusion model: `surgery eval` measures classifiers" in err[0], err
