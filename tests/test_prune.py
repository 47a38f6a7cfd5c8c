"""Pruning: the solver equals direct solves, the budget is exact, sliced == masked after reload,
killed builds and searches resume exactly, bad input fails clearly."""
from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from conftest import tiny_llama, tiny_mistral, tiny_qwen2
from surgery import SurgeryError
from surgery.models.adapters import DecoderAdapter
from surgery.prune import PruneConfig, SearchConfig, prune
from surgery.prune import engine as engine_module
from surgery.prune import supernet as supernet_module
from surgery.prune.apply import apply_masked, slice_model
from surgery.prune.search import Space, mutate
from surgery.prune.solver import Covariance, Snapshot, damped, gradient, progressive_prune, unit_scores
from surgery.prune.supernet import Supernet
from surgery.prune.units import SubKey, layout, target_removals

SEARCH = SearchConfig(generations=3, offspring=4, survivors=[2, 1], stage_windows=[2, 4, 8], top_k=16)
FAST = dict(batch_size=4, ffn_step=0.25, iterations=2, search_samples=8, search=SEARCH)
A0, A1, M0, M1 = SubKey(0, "attn"), SubKey(1, "attn"), SubKey(0, "mlp"), SubKey(1, "mlp")


def calib(n=16, seed=0):
    return torch.randint(0, 99, (n, 16), generator=torch.Generator().manual_seed(seed))


def layer_data(seed=0, n=400, cols=12, out=5):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g,
                                                                              dtype=torch.float64)
    W = torch.randn(out, cols, generator=g, dtype=torch.float64)
    return X, W


@pytest.mark.parametrize("unit", [1, 2, 3])
def test_least_squares_resolve_equals_lstsq(unit):
    X, W = layer_data()
    cov = Covariance(12)
    for chunk in X.split(100):
        cov.add(chunk, chunk)
    n_units = 12 // unit
    snaps = progressive_prune(W, cov, W, unit, [0, 1, n_units // 2, n_units - 1], damp=0.0)
    Y = X @ W.t()
    for removed, snap in snaps.items():
        assert snap.kept.numel() == n_units - removed
        cols = (snap.kept.view(-1, 1) * unit + torch.arange(unit)).reshape(-1)
        direct = torch.zeros_like(W)
        direct[:, cols] = torch.linalg.lstsq(X[:, cols], Y).solution.t()
        torch.testing.assert_close(snap.full(), direct, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("heads", [4, 8])
def test_head_units_reach_every_weight_count_with_least_squares_weights(heads):
    """Query-head units in KV groups of 2: every count of weight units (heads removed + KV heads left
    empty) up to one head and its KV head is reached exactly — with 4 heads, count 3 is only
    reachable by giving a removed head back (both groups are down to one head at count 2) — and each
    snapshot is the least-squares solution on its kept columns."""
    X, W = layer_data(cols=heads * 3)
    cov = Covariance(heads * 3)
    cov.add(X, X)
    most = heads + heads // 2 - 2
    snaps = progressive_prune(W, cov, W, 3, list(range(most + 1)), damp=0.0, group=2)
    assert sorted(snaps) == list(range(most + 1))
    Y = X @ W.t()
    for count, snap in snaps.items():
        kept = snap.kept
        assert heads - kept.numel() + heads // 2 - (kept // 2).unique().numel() == count
        cols = (kept.view(-1, 1) * 3 + torch.arange(3)).reshape(-1)
        direct = torch.zeros_like(W)
        direct[:, cols] = torch.linalg.lstsq(X[:, cols], Y).solution.t()
        torch.testing.assert_close(snap.full(), direct, rtol=1e-7, atol=1e-8)
    if heads == 4:
        assert snaps[3].kept.numel() == 2 and (snaps[3].kept // 2).unique().numel() == 1
    for count in range(most + 1):  # each count asked alone: in rounds of one unit, down to last-of-group heads
        cov = Covariance(heads * 3)
        cov.add(X, X)
        kept = progressive_prune(W, cov, W, 3, [count], damp=0.0, rounds=16, group=2)[count].kept
        assert heads - kept.numel() + heads // 2 - (kept // 2).unique().numel() == count


@pytest.mark.parametrize("accumulation", ["centre", "expectation"])
def test_head_units_budget_is_exact_and_the_sliced_model_holds_it(accumulation):
    model = tiny_llama(num_attention_heads=8, num_key_value_heads=2)
    result = prune(model, PruneConfig(sparsity=0.5, attn_unit="head", accumulation=accumulation, **FAST), calib(),
                   progress=False)
    lay = result.layout
    assert [s.units for s in lay.of_kind("attn")] == [10, 10]  # 8 query + 2 KV heads per layer
    assert result.achieved_sparsity == 0.5
    small = result.slice()
    assert DecoderAdapter(small).block_linear_params() == lay.denominator // 2
    ids = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(SurgeryError, match="one query head per KV head"):
        prune(tiny_llama(num_key_value_heads=4), PruneConfig(sparsity=0.5, attn_unit="head", **FAST), calib(),
              progress=False)
    with pytest.raises(SurgeryError, match="does not divide the head dim"):
        prune(tiny_llama(), PruneConfig(sparsity=0.5, attn_unit="head", width_multiple=16, **FAST), calib(),
              progress=False)
    # `auto`: query heads where KV heads are shared and the width multiple allows, else KV groups
    from surgery.models.sliced import model_for, sliced_config

    mixed = model_for(sliced_config(tiny_llama().config, [4, 2], [2, 2], [40, 40]))  # layer 1: one head per KV
    models = ((tiny_llama(), 1), (tiny_llama(num_key_value_heads=4), 1), (tiny_llama(intermediate_size=48), 16),
              (mixed, 1))
    auto = [layout(DecoderAdapter(m), w, "auto") for m, w in models]
    assert [[s.group for s in lay.of_kind("attn")] for lay in auto] == [[2, 2], [0, 0], [0, 0], [0, 0]]


def test_obs_cost_at_the_optimum_is_the_exact_loss_increase():
    """At the least-squares point the first-order term vanishes and the OBS term is exactly the
    loss increase of removing the unit and re-solving the rest (½ of the squared error, per row)."""
    X, W = layer_data(1)
    cov = Covariance(12)
    cov.add(X, X)
    assert cov.M is None  # dense inputs: M = H is not kept
    H = damped(cov.H, 0.0)
    C = cov.H @ W.t()
    Hinv = torch.linalg.inv(H)
    cols = torch.arange(12).view(6, 2)
    scores = unit_scores(W.t().contiguous(), gradient(W.t(), H, C), Hinv, cols)
    Y = X @ W.t()
    for u in range(6):
        keep = torch.tensor([c for c in range(12) if c // 2 != u])
        fit = torch.linalg.lstsq(X[:, keep], Y).solution
        increase = 0.5 * float(((X[:, keep] @ fit - Y) ** 2).sum()) / X.shape[0]
        assert float(scores[u]) == pytest.approx(increase, rel=1e-6, abs=1e-10)


def test_first_order_term_sees_upstream_error():
    X, W = layer_data(2)
    noisy = X + 0.3 * torch.randn(X.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cov = Covariance(12)
    cov.add(noisy, X)
    H, C = damped(cov.H, 0.0), cov.M @ W.t()
    G = W @ H - C.t()
    assert float(G.abs().max()) > 1e-3  # W is no longer optimal for the perturbed inputs
    snap = progressive_prune(W, cov, W, 1, [0], damp=0.0)[0]  # re-solve on all columns
    direct = torch.linalg.lstsq(noisy, X @ W.t()).solution.t()
    torch.testing.assert_close(snap.full(), direct, rtol=1e-8, atol=1e-9)


def brute_force_path(X, X_dense, W, unit, removals, rounds, first_order="gradient"):
    """The progressive removal computed from scratch each round: the least-squares fit of
    Y = X_dense·Wᵀ on the live columns; with the `gradient` term (zero at that fit, no damping) each
    live unit costs the exact rise of the re-fitted error when it goes, with `output` the output
    correlation |⟨C_P, W_P⟩| plus the OBS term at the fit; the cheapest units of the round go."""
    n = X.shape[0]
    Y = X_dense @ W.t()
    H, C = X.t() @ X / n, X.t() @ Y / n

    def cols_of(units):
        return [c for u in units for c in range(u * unit, (u + 1) * unit)]

    def fit(units):  # (the fitted columns, ½ the mean squared error)
        A = cols_of(units)
        sol = torch.linalg.lstsq(X[:, A], Y).solution
        return sol.t(), 0.5 * float(((X[:, A] @ sol - Y) ** 2).sum()) / n

    n_units = W.shape[1] // unit
    alive, kept_at, removed = list(range(n_units)), {}, 0
    for target in removals:
        per_round = max(1, -(-(target - removed) // rounds))
        while removed < target:
            W_A, err = fit(alive)
            A = cols_of(alive)
            Hinv_A = torch.linalg.inv(H[A][:, A])
            scores = []
            for i, u in enumerate(alive):
                if first_order == "gradient":
                    scores.append(fit(alive[:i] + alive[i + 1:])[1] - err)
                    continue
                P = list(range(i * unit, (i + 1) * unit))  # u's columns among the live ones
                W_P = W_A[:, P]
                first = (C[cols_of([u])].t() * W_P).sum().abs()
                scores.append(float(first + 0.5 * torch.einsum("oi,ij,oj->", W_P,
                                                               torch.linalg.inv(Hinv_A[P][:, P]), W_P)))
            order = sorted(range(len(alive)), key=scores.__getitem__)
            gone = {alive[i] for i in order[:min(per_round, target - removed)]}
            alive = [u for u in alive if u not in gone]
            removed += len(gone)
        kept_at[target] = alive
    return kept_at


@pytest.mark.parametrize("first_order", ["gradient", "output"])
@pytest.mark.parametrize("unit", [1, 2])
def test_progressive_path_equals_the_brute_force_recomputation(unit, first_order):
    """With upstream error (X ≠ X_dense) the solver starts at the least-squares fit, forms the
    gradient once and downdates H⁻¹: it removes the same units at every count as re-fitting the live
    columns from scratch each round and, with the `gradient` term, ranking units by the exact rise
    of the re-fitted error (what the OBS term is only at a fit: ranked from W_dense, the order
    differed here). With the output term (Týr's ⟨XᵀY, W⟩) likewise, and its order differs."""
    X, W = layer_data(3, cols=24)
    noisy = X + torch.randn(X.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    n_units = 24 // unit
    removals = [n_units // 4, n_units // 2, n_units - 2]
    kept = {}
    for term in ("gradient", "output"):
        cov = Covariance(24)
        cov.add(noisy, X)
        kept[term] = {r: s.kept.tolist() for r, s in progressive_prune(W, cov, W, unit, removals, damp=0.0, rounds=3,
                                                                       first_order=term).items()}
    assert kept[first_order] == brute_force_path(noisy, X, W, unit, removals, rounds=3, first_order=first_order)
    assert kept["gradient"] != kept["output"]
    with pytest.raises(SurgeryError, match="first_order must be 'gradient' or 'output'"):
        progressive_prune(W, Covariance(24), W, unit, removals, first_order="hessian")


@pytest.mark.parametrize("first_order", ["gradient", "output"])
@pytest.mark.parametrize("unit,group", [(1, 0), (3, 0), (3, 2)])
def test_dense_inputs_keep_one_matrix_and_give_the_paired_result(unit, group, first_order):
    """With X_dense the very tensor X the covariance keeps H only and the solver takes the gradient
    from the damping alone (G = D·W_denseᵀ); with damping on, it removes the same units and returns
    the same weights as the general path fed a copy of X (M kept, C and G formed by products)."""
    X, W = layer_data(4, cols=24)
    shared, paired = Covariance(24), Covariance(24)
    for chunk in X.split(100):
        shared.add(chunk, chunk)
        paired.add(chunk, chunk.clone())
    assert shared.M is None and paired.M is not None
    n_units = 24 // unit
    most = n_units if not group else n_units + n_units // group - 2
    removals = sorted({1, n_units // 3, n_units // 2, most - 1})
    fast = progressive_prune(W, shared, W, unit, removals, damp=0.05, rounds=4, group=group, first_order=first_order)
    slow = progressive_prune(W, paired, W, unit, removals, damp=0.05, rounds=4, group=group, first_order=first_order)
    assert shared.H is None and paired.H is None  # the statistics are consumed
    for r in removals:
        assert fast[r].kept.tolist() == slow[r].kept.tolist()
        torch.testing.assert_close(fast[r].full(), slow[r].full(), rtol=1e-9, atol=1e-10)
    with pytest.raises(SurgeryError, match="every batch must come with its own dense inputs"):
        shared = Covariance(24)
        shared.add(X, X)
        shared.add(X, X.clone())


def test_float32_solver_keeps_the_float64_units_and_weights():
    """`hessian_dtype: float32` (Týr's and GPTQ's precision, half the memory): the same units at every
    level as the float64 solver on a well-conditioned layer, and weights within float32 round-off of
    the path (1e-4 relative)."""
    X, W = layer_data(5, n=2000, cols=64, out=16)
    X = X.float()
    snaps = {}
    for dtype in (torch.float64, torch.float32):
        cov = Covariance(64, dtype=dtype)
        for chunk in X.split(500):
            cov.add(chunk, chunk)
        assert cov.H.dtype == dtype
        snaps[dtype] = progressive_prune(W.float(), cov, W.float(), 2, [4, 8, 16, 24], damp=0.01, rounds=4)
    for r, s64 in snaps[torch.float64].items():
        s32 = snaps[torch.float32][r]
        assert s32.kept.tolist() == s64.kept.tolist(), r
        torch.testing.assert_close(s32.columns, s64.columns, rtol=1e-4, atol=1e-4 * float(s64.columns.abs().max()))


def dense_supernet(model, removed_units, attn_unit="kv_group"):
    """A supernet whose candidates keep dense weights, zeroing the given units' columns (head units:
    the count also takes the KV heads left with no query head)."""
    ad = DecoderAdapter(model)
    lay = layout(ad, 1, attn_unit)
    net = Supernet()
    counts = {}
    for s in lay.sublayers:
        w = ad.output_proj(s.key.layer, s.key.kind).weight.detach().clone()
        gone = torch.tensor(removed_units.get(s.key, []), dtype=torch.long)
        kept = torch.tensor([u for u in range(s.unit_set.count) if u not in removed_units.get(s.key, [])])
        cols = (gone.view(-1, 1) * s.unit_cols + torch.arange(s.unit_cols)).reshape(-1)
        w[:, cols] = 0
        counts[s.key] = len(gone) + (s.unit_set.count // s.group - (kept // s.group).unique().numel() if s.group else 0)
        net.candidates[s.key] = {counts[s.key]: Snapshot.of(kept, w, s.unit_cols)}
    return ad, net, counts


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2, tiny_mistral])
def test_removing_zero_units_leaves_logits_unchanged(make):
    model = make()
    units = {A0: [1], M1: [0, 5, 17], M0: [39]}
    if model.config.num_key_value_heads == 1:
        units.pop(A0)
    ad = DecoderAdapter(model)
    with torch.no_grad():  # make those units' contributions exactly zero
        for key, us in units.items():
            lin = ad.output_proj(key.layer, key.kind)
            width = lin.in_features // (ad.block_shape(key.layer).num_kv_heads if key.kind == "attn" else lin.in_features)
            for u in us:
                lin.weight[:, u * width : (u + 1) * width] = 0
    ids = torch.randint(0, 99, (2, 11))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    ad, net, dist = dense_supernet(model, units)
    small = slice_model(ad, layout(ad), net, dist)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=ids).logits, before, rtol=1e-5, atol=1e-6)


def test_head_units_slice_unequal_kv_groups_that_reload_and_decode(tmp_path):
    """Query heads pruned unevenly across KV heads (3 + 1 of 4 in layer 0, one KV head emptied in
    layer 1): the sliced model keeps each query head on its own KV head, equals the masked model
    under sdpa and eager attention, after a reload, and while decoding with the cache."""
    model = tiny_llama(num_attention_heads=8, num_key_value_heads=2)
    units = {A0: [0, 1, 2, 5], A1: [4, 5, 6, 7, 1]}
    ad = DecoderAdapter(model)
    with torch.no_grad():
        for key, heads in units.items():
            for h in heads:
                ad.output_proj(key.layer, "attn").weight[:, h * 4:(h + 1) * 4] = 0
    ids = torch.randint(0, 99, (2, 11))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    ad, net, counts = dense_supernet(model, units, "head")
    assert counts[A0] == 4 and counts[A1] == 6  # layer 1: five heads and the KV head they emptied
    lay = layout(ad, 1, "head")
    small = slice_model(ad, lay, net, counts)
    assert small.config.layer_head_kv == [[0, 1, 1, 1], []]  # layer 1: one KV head for 3 queries is standard
    assert small.config.layer_num_heads == [4, 3] and small.config.layer_num_kv_heads == [2, 1]
    assert DecoderAdapter(small).block_linear_params() == ad.block_linear_params() - lay.removed_params(counts)
    small.save_pretrained(tmp_path / "h")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "h").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, before, rtol=1e-5, atol=1e-6)
        back.config._attn_implementation = "eager"
        torch.testing.assert_close(back(input_ids=ids).logits, before, rtol=1e-5, atol=1e-6)
        assert back.model.layers[0].self_attn.k_proj.out_features == 2 * 4  # both KV heads stored once
    out = back.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    ref = model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2])
def test_sliced_equals_masked_after_save_and_reload(tmp_path, make):
    model = make()
    result = prune(model, PruneConfig(sparsity=0.5, **FAST), calib(), progress=False)
    small = result.slice()
    small.save_pretrained(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()  # `import surgery` registered it
    ids = torch.randint(0, 99, (2, 13))
    with torch.no_grad():
        masked = model(input_ids=ids).logits
        torch.testing.assert_close(back(input_ids=ids).logits, masked, rtol=1e-5, atol=1e-6)
    params = sum(p.numel() for p in back.parameters())
    assert params < sum(p.numel() for p in make().parameters())
    if cfg["model_type"].startswith("surgery_sliced_"):
        assert len(set(cfg["layer_intermediate_sizes"])) > 1 or len(set(cfg["layer_num_heads"])) > 1
    # decoding with the KV cache works on the sliced model
    out = back.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)


def test_uniform_result_saves_as_a_stock_llama(tmp_path):
    model = tiny_llama()
    result = prune(model, PruneConfig(sparsity=0.5, start="uniform", **{**FAST, "iterations": 0}), calib(),
                   progress=False)
    result.slice().save_pretrained(tmp_path / "u")
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["intermediate_size"] == 20 and cfg["num_key_value_heads"] == 1
    assert cfg["head_dim"] == 8 and cfg["num_attention_heads"] == 2


def test_first_order_output_reaches_the_solver_and_masks_what_it_solved(monkeypatch):
    """`first_order: output` is handed to every sub-layer's solver, and the uniform model is the one the
    solver's output-term path gives: its kept units are those of `progressive_prune(..., "output")`,
    not the gradient term's (which keep other units here)."""
    seen, kept = [], {}
    real = supernet_module.progressive_prune

    def spy(W, cov, W_dense, unit, removals, damp, rounds, group, first_order):
        seen.append(first_order)
        out = real(W, cov, W_dense, unit, removals, damp, rounds, group, first_order)
        kept[len(kept)] = {r: s.kept.tolist() for r, s in out.items()}
        return out

    monkeypatch.setattr(supernet_module, "progressive_prune", spy)
    cfg = dict(sparsity=0.5, start="uniform", attn_unit="kv_group", **{**FAST, "iterations": 0})
    result = prune(tiny_llama(), PruneConfig(first_order="output", **cfg), calib(), progress=False)
    assert seen and set(seen) == {"output"}
    assert result.distribution == target_removals(result.layout, 0.5)
    subs = result.layout.sublayers  # solved in this order: per block, attention then FFN
    for i, sub in enumerate(subs):
        cand = result.supernet.candidates[sub.key][result.distribution[sub.key]]
        assert cand.kept.tolist() == kept[i][result.distribution[sub.key]]
    monkeypatch.setattr(supernet_module, "progressive_prune", real)
    grad = prune(tiny_llama(), PruneConfig(**cfg), calib(), progress=False)
    assert any(grad.supernet.candidates[s.key][grad.distribution[s.key]].kept.tolist()
               != kept[i][result.distribution[s.key]] for i, s in enumerate(subs))


def _fed_inputs(model: torch.nn.Module, ids: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
    """The inputs every output projection of `model` receives on `ids`, [tokens, in]."""
    adapter, seen = DecoderAdapter(model), {}
    hooks = [adapter.output_proj(i, kind).register_forward_pre_hook(
        lambda m, args, key=(i, kind): seen.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1])))
        for i in range(adapter.num_layers) for kind in ("attn", "mlp")]
    with torch.no_grad():
        for batch in ids.split(4):
            model(batch)
    for h in hooks:
        h.remove()
    return {k: torch.cat(v).double() for k, v in seen.items()}


def _gap_to_sequential_fit(model: torch.nn.Module, dense: torch.nn.Module, ids: torch.Tensor, damp: float) -> float:
    """Largest relative gap between a pruned projection's kept columns and the damped least-squares
    fit of the dense layer on the inputs `model` itself gives that projection."""
    fed, adapter, dense_adapter = _fed_inputs(model, ids), DecoderAdapter(model), DecoderAdapter(dense)
    worst = 0.0
    for (i, kind), X in fed.items():
        W = adapter.output_proj(i, kind).weight.detach().double()
        K = torch.nonzero(W.abs().sum(0)).flatten()
        assert 0 < K.numel() < W.shape[1]
        H = X.t() @ X / X.shape[0]
        C = H @ dense_adapter.output_proj(i, kind).weight.detach().double().t()
        H[range(len(H)), range(len(H))] += damp * H.diagonal().mean()
        fit = torch.linalg.solve(H[K][:, K], C[K]).t()
        worst = max(worst, float((W[:, K] - fit).abs().max() / fit.abs().max()))
    return worst


@pytest.mark.parametrize("target_inputs", ["pruned", "dense"])
def test_sequential_calibration_fits_each_layer_on_what_the_pruned_model_feeds_it(target_inputs):
    """`accumulation: centre` on a uniform model is exact sequential calibration: with
    `target_inputs: pruned` every pruned projection's kept columns are the damped least-squares fit
    of the dense layer on the very inputs the finished pruned model gives it (brute force from a
    forward pass of that model); `dense` fits the dense model's outputs instead, so not these."""
    model, dense, ids = tiny_llama(), tiny_llama(), calib()
    cfg = PruneConfig(sparsity=0.5, start="uniform", iterations=0, accumulation="centre", attn_unit="kv_group",
                      target_inputs=target_inputs, **{k: v for k, v in FAST.items() if k != "iterations"})
    prune(model, cfg, ids, progress=False)
    worst = _gap_to_sequential_fit(model, dense, ids, cfg.damp)
    if target_inputs == "pruned":
        assert worst < 1e-5
    else:
        assert worst > 1e-2


@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_budget_is_exact_and_the_search_keeps_it(sparsity):
    model = tiny_llama()
    result = prune(model, PruneConfig(sparsity=sparsity, **FAST), calib(), progress=False)
    lay = result.layout
    target = target_removals(lay, sparsity)
    for kind in ("attn", "mlp"):
        keys = [s.key for s in lay.of_kind(kind)]
        assert sum(result.distribution[k] for k in keys) == sum(target[k] for k in keys)
    assert result.removed_params == lay.removed_params(target)
    small = result.slice()
    dense_block = DecoderAdapter(tiny_llama()).block_linear_params()
    assert DecoderAdapter(small).block_linear_params() == dense_block - result.removed_params
    levels = {M0: [0, 4, 8, 12], M1: [0, 4, 8, 12], A0: [0, 1], A1: [0, 1]}
    rng = random.Random(0)
    parent = {M0: 4, M1: 8, A0: 1, A1: 0}
    for _ in range(200):
        child = mutate(parent, Space(levels, {"attn": 1, "mlp": 4}), rng)
        assert child[M0] + child[M1] == 12 and child[A0] + child[A1] == 1
        assert all(child[k] in levels[k] for k in child)


def test_ffn_spacing_halves_each_iteration_down_to_its_floor():
    """ffn_step·I / 2^t neurons per level (40 neurons: 10, 5, 2), never below `ffn_min_step` (Týr's code
    floors it at 32: every iteration then searches the first ladder)."""
    lay = layout(DecoderAdapter(tiny_llama()))
    centres = {s.key: 0 for s in lay.sublayers}

    def steps(**kw) -> list[int]:
        return [engine_module._space(lay, centres, PruneConfig(**kw), t).steps["mlp"] for t in range(3)]
    assert steps(ffn_step=0.25) == [10, 5, 2]
    assert steps(ffn_step=0.25, ffn_min_step=4) == [10, 5, 4]
    assert steps(ffn_step=0.25, ffn_min_step=12) == [12, 12, 12]


@pytest.mark.parametrize("accumulation,target_inputs", [("none", "pruned"), ("centre", "pruned"),
                                                          ("expectation", "dense")])
def test_killed_supernet_build_and_search_resume_to_the_same_result(tmp_path, monkeypatch, accumulation,
                                                                      target_inputs):
    """Every way of making the next block's inputs (which the checkpoint stores: the dense model's,
    the accumulated ones, or both) resumes to the uninterrupted result."""
    cfg = dict(sparsity=0.5, accumulation=accumulation, target_inputs=target_inputs, **FAST)
    ref_model = tiny_llama()
    ref = prune(ref_model, PruneConfig(**cfg), calib(), progress=False)

    real_build = supernet_module.progressive_prune
    calls = {"n": 0}

    def dying_solver(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # block 1's attention in iteration 1
            raise KeyboardInterrupt
        return real_build(*a, **k)

    monkeypatch.setattr(supernet_module, "progressive_prune", dying_solver)
    with pytest.raises(KeyboardInterrupt):
        prune(tiny_llama(), PruneConfig(**cfg), calib(), resume_dir=str(tmp_path), progress=False)
    assert (tmp_path / "iteration_0" / "supernet" / "step_0.safetensors").exists()
    monkeypatch.setattr(supernet_module, "progressive_prune", real_build)

    real_evolve = engine_module.evolve
    def dying_evolve(*a, **k):  # noqa: E306
        fit = a[4]
        real_call = fit.__class__.__call__
        count = {"n": 0}

        def dying_call(self, model, *a, **k):
            count["n"] += 1
            if count["n"] == 12:
                raise KeyboardInterrupt
            return real_call(self, model, *a, **k)

        monkeypatch.setattr(fit.__class__, "__call__", dying_call)
        try:
            return real_evolve(*a, **k)
        finally:
            monkeypatch.setattr(fit.__class__, "__call__", real_call)

    monkeypatch.setattr(engine_module, "evolve", dying_evolve)
    with pytest.raises(KeyboardInterrupt):
        prune(tiny_llama(), PruneConfig(**cfg), calib(), resume_dir=str(tmp_path), progress=False)
    assert (tmp_path / "iteration_0" / "search" / "state.json").exists()
    monkeypatch.setattr(engine_module, "evolve", real_evolve)
    model = tiny_llama()
    resumed = prune(model, PruneConfig(**cfg), calib(), resume_dir=str(tmp_path), progress=False)
    assert resumed.distribution == ref.distribution
    for (n, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=n)


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.0}, "sparsity: Input should be less than 1"),
    ({"sparsity": -0.1}, "sparsity: Input should be greater than or equal to 0"),
    ({"sparsity": 0.9}, "cannot be met"),  # every layer keeps one KV group of its two
    ({"first_order": "hessian"}, "first_order: Input should be 'gradient' or 'output'"),
    ({"target_inputs": "model"}, "target_inputs: Input should be 'pruned' or 'dense'"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(SurgeryError, match=match):
        prune(tiny_llama(), PruneConfig(**{**FAST, **kwargs}), calib(), progress=False)


def test_unsupported_architecture_and_empty_calibration():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(SurgeryError, match="unsupported architecture 'gpt2'"):
        prune(gpt2, PruneConfig(**FAST), calib(), progress=False)
    with pytest.raises(SurgeryError, match="empty calibration"):
        prune(tiny_llama(), PruneConfig(**FAST), torch.zeros(0, 16, dtype=torch.long), progress=False)


def test_masked_application_matches_the_supernet():
    model = tiny_llama()
    result = prune(model, PruneConfig(sparsity=0.25, **FAST), calib(), progress=False)
    ad = DecoderAdapter(model)
    apply_masked(ad, result.supernet, result.distribution)
    for s in result.layout.sublayers:
        w = ad.output_proj(s.key.layer, s.key.kind).weight.detach()
        kept = result.supernet.kept(s.key, result.distribution[s.key])
        zero_units = [u for u in range(s.unit_set.count) if u not in kept.tolist()]
        for u in zero_units:
            assert float(w[:, u * s.unit_cols : (u + 1) * s.unit_cols].abs().max()) == 0.0


@pytest.mark.parametrize("method", ["wanda_sp", "flap"])
def test_baselines_mask_exactly_the_budget_and_keep_one_kv_group(method):
    from surgery.prune import baselines

    model = tiny_llama()
    counts = getattr(baselines, method)(model, 0.5, calib(), batch_size=4)
    lay = layout(DecoderAdapter(tiny_llama()))
    target = target_removals(lay, 0.5)
    for kind in ("attn", "mlp"):
        keys = [s.key for s in lay.of_kind(kind)]
        assert sum(counts[k] for k in keys) == sum(target[k] for k in keys)
    ad = DecoderAdapter(model)
    for s in lay.sublayers:  # exactly `counts` units of each output projection are zero columns
        w = ad.output_proj(s.key.layer, s.key.kind).weight.detach()
        zero = int((w.view(w.shape[0], s.units, s.unit_cols).abs().sum((0, 2)) == 0).sum())
        assert zero == counts[s.key]
        assert s.key.kind != "attn" or zero < s.units


def test_width_multiple_keeps_every_width_a_multiple_and_a_chain_on_one_scheme():
    from surgery.quantize import RTNConfig, quantize

    model = tiny_llama()
    cfg = PruneConfig(sparsity=0.5, width_multiple=8, **FAST)
    result = prune(model, cfg, calib(), progress=False)
    kept = [r["neurons_kept"] for r in result.per_layer()]
    assert all(k % 8 == 0 for k in kept) and sum(kept) == 40  # 80 neurons, half of them in steps of 8
    small = result.slice()
    q = quantize(small, RTNConfig(num_bits=4, group_size=8), progress=False)  # no group_rule needed
    assert list(q.schemes()) == ["W4 g8"]
    with pytest.raises(SurgeryError, match="width_multiple 16: layer 0's neurons"):
        prune(tiny_llama(), PruneConfig(sparsity=0.5, width_multiple=16, **FAST), calib(), progress=False)


def test_fitness_on_drawn_windows_equals_the_kl_on_those_windows():
    """The search's fitness on a draw of pool windows is the top-k KL on exactly those windows."""
    from surgery.evaluate.lm import kl_divergence
    from surgery.prune.search import TopKFitness

    dense, other = tiny_llama(seed=0), tiny_llama(seed=1)
    pool = calib(n=10)
    fit = TopKFitness(dense, pool, top_k=16, batch_size=3)
    for pick in ([7, 2, 5], [0], list(range(10))):
        want = kl_divergence(dense, other, pool[sorted(pick)], batch_size=4, top_k=16)
        assert fit(other, indices=pick) == pytest.approx(want, rel=1e-6)
    assert fit(other, n_windows=4) == pytest.approx(kl_divergence(dense, other, pool[:4], top_k=16), rel=1e-6)
    assert fit(other) == pytest.approx(kl_divergence(dense, other, pool, top_k=16), rel=1e-6)


def test_resampled_search_draws_new_windows_and_keeps_the_best_iteration(monkeypatch):
    from surgery.prune.search import TopKFitness

    seen = []
    real = TopKFitness.__call__

    def spy(self, model, n_windows=None, indices=None):
        seen.append(tuple(indices) if indices is not None else n_windows)
        return real(self, model, n_windows, indices)

    monkeypatch.setattr(TopKFitness, "__call__", spy)
    result = prune(tiny_llama(), PruneConfig(sparsity=0.5, **FAST), calib(), progress=False)
    draws = {s for s in seen if isinstance(s, tuple)}
    assert len(draws) > 4  # fresh windows per stage and generation
    fits = [it["fitness"] for it in result.iterations]
    assert result.iterations[result.best_iteration - 1]["fitness"] == min(fits)
    monkeypatch.setattr(TopKFitness, "__call__", real)
    import dataclasses

    fixed = prune(tiny_llama(), PruneConfig(sparsity=0.5, **{**FAST, "search": dataclasses.replace(SEARCH, resample=False)}),
                  calib(), progress=False)
    assert fixed.iterations and fixed.achieved_sparsity == result.achieved_sparsity


def test_unit_scores_on_two_threads_equal_one_block_at_a_time():
    """Batched 256×256 blocks on two MKL threads (where torch.linalg.solve's batched LU fails in
    torch 2.13) give the per-block OBS scores."""
    g = torch.Generator().manual_seed(0)
    n, s, out = 512, 256, 64
    R = torch.randn(n, n, dtype=torch.float64, generator=g)
    Hinv = R @ R.t() / n + torch.eye(n, dtype=torch.float64)
    W = torch.randn(out, n, dtype=torch.float64, generator=g)
    H, C = torch.linalg.inv(Hinv), torch.randn(n, out, dtype=torch.float64, generator=g)
    cols = torch.arange(n).view(n // s, s)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = unit_scores(W.t().contiguous(), gradient(W.t(), H, C), Hinv, cols)
    finally:
        torch.set_num_threads(threads)
    G = W @ H - C.t()
    for u in range(cols.shape[0]):
        c = cols[u]
        first = (G[:, c] * W[:, c]).sum().abs()
        obs = 0.5 * torch.einsum("oi,ij,oj->", W[:, c], torch.linalg.inv(Hinv[c][:, c]), W[:, c])
        assert float(got[u]) == pytest.approx(float(first + obs), rel=1e-9)
