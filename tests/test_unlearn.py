"""Unlearning: frozen weights stay bit-identical, a digit class is forgotten on real data, the MIA
metric and the index files behave exactly, bad input fails clearly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from surgery import SurgeryError
from surgery.data.images import digits
from surgery.evaluate import accuracy
from surgery.reference import load_reference
from surgery.unlearn import UnlearnConfig, saliency_mask, unlearn
from surgery.unlearn.metrics import avg_gap, mia_efficacy_from_confidence, min_k_auc
from surgery.unlearn.splits import class_split, load_split, random_split, save_split


@pytest.fixture(scope="module")
def digit_sets():
    tr, te = digits("train"), digits("test")
    f, r = class_split(tr, 3)
    return tr.subset(f), tr.subset(r), te.subset(torch.nonzero(te.y != 3).flatten())


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("optimizer,extra", [("sgd", {"momentum": 0.9, "weight_decay": 5e-4}),
                                             ("adamw", {"weight_decay": 0.1})])
def test_weights_outside_the_mask_are_bit_identical(digit_sets, optimizer, extra):
    forget, retain, _ = digit_sets
    model, _, _ = load_reference("digits-mlp", progress=False)
    before = _snapshot(model)
    cfg = UnlearnConfig(method="salun", density=0.3, epochs=3, lr=0.05 if optimizer == "sgd" else 1e-3,
                        batch_size=32, optimizer=optimizer, **extra)
    result = unlearn(model, cfg, forget, retain, progress=False)
    moved = 0
    for n, p in model.named_parameters():
        m = result.mask[n]
        assert torch.equal(p[~m], before[n][~m]), n  # bit for bit
        moved += int((p[m] != before[n][m]).sum())
    assert moved > 0.5 * result.mask.selected  # and the selected ones did move
    assert result.trainable == result.mask.selected


def test_masked_lm_unlearning_is_bit_identical_outside_the_mask():
    model = tiny_llama()
    before = _snapshot(model)
    g = torch.Generator().manual_seed(0)
    forget, retain = torch.randint(0, 99, (8, 12), generator=g), torch.randint(0, 99, (8, 12), generator=g)
    cfg = UnlearnConfig(method="npo", use_mask=True, density=0.2, epochs=2, lr=1e-3, batch_size=4,
                        optimizer="adamw", weight_decay=0.1)
    result = unlearn(model, cfg, forget, retain, progress=False)
    for n, p in model.named_parameters():
        m = result.mask[n]
        assert torch.equal(p[~m], before[n][~m]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_forgetting_a_digit_class(digit_sets):
    forget, retain, test = digit_sets
    model, _, _ = load_reference("digits-mlp", progress=False)
    ra0 = accuracy(model, retain)
    result = unlearn(model, UnlearnConfig(method="salun", lr=0.02, epochs=5, batch_size=32), forget, retain,
                     progress=False)
    assert accuracy(model, forget) <= 5.0
    assert accuracy(model, retain) >= ra0 - 3.0
    assert result.mask.density == pytest.approx(0.5, abs=1e-6)


def test_random_labels_never_equal_the_true_label():
    from surgery.unlearn.losses import random_labels

    y = torch.randint(0, 10, (10000,))
    r = random_labels(y, 10, torch.Generator().manual_seed(0))
    assert not bool((r == y).any())
    assert set(r.tolist()) == set(range(10))
    anyr = random_labels(y, 10, torch.Generator().manual_seed(0), "any")  # the official SalUn code's rule
    assert 0.08 < float((anyr == y).float().mean()) < 0.12  # its own label 1/C of the time (measured 0.101)
    assert set(anyr.tolist()) == set(range(10))
    assert random_labels(y, 10, torch.Generator(), "next").tolist() == ((y + 1) % 10).tolist()


def test_mia_efficacy_matches_a_hand_computation():
    shadow_in = np.array([0.90, 0.95, 0.97, 0.99, 0.92, 0.96])
    shadow_out = np.array([0.05, 0.10, 0.20, 0.15, 0.08, 0.12])
    target = np.array([0.98, 0.07, 0.11, 0.94])  # by hand: member, non, non, member
    assert mia_efficacy_from_confidence(shadow_in, shadow_out, target) == pytest.approx(50.0)
    assert avg_gap({"UA": 10, "MIA": 20, "RA": 90, "TA": 80}, {"UA": 12, "MIA": 16, "RA": 91, "TA": 80}) == \
        pytest.approx((2 + 4 + 1 + 0) / 4)


def test_min_k_auc_is_half_for_identical_sets():
    model = tiny_llama()
    w = torch.randint(0, 99, (6, 10), generator=torch.Generator().manual_seed(1))
    assert min_k_auc(model, w, w) == pytest.approx(0.5)


def test_index_files_reproduce_the_split(tmp_path):
    data = digits("train")
    f, r = random_split(data, 0.1, seed=7)
    assert f.numel() == round(0.1 * len(data)) and f.numel() + r.numel() == len(data)
    assert not set(f.tolist()) & set(r.tolist())
    save_split(tmp_path / "split.npz", f, r, mode="random", fraction=0.1, seed=7)
    f2, r2 = load_split(tmp_path / "split.npz")
    assert torch.equal(f, f2) and torch.equal(r, r2)
    f3, _ = random_split(data, 0.1, seed=7)
    assert torch.equal(f, f3)
    assert (tmp_path / "split.json").exists()


@pytest.mark.parametrize("make,match", [
    (lambda d: class_split(d, 12), "forget class 12 does not exist"),
    (lambda d: random_split(d, 0.0, 0), "forget fraction"),
])
def test_bad_splits(make, match):
    with pytest.raises(SurgeryError, match=match):
        make(digits("train"))


def test_bad_unlearning_input(digit_sets):
    forget, retain, _ = digit_sets
    model, _, _ = load_reference("digits-mlp", progress=False)
    with pytest.raises(SurgeryError, match="empty forget set"):
        unlearn(model, UnlearnConfig(), forget.subset([]), retain, progress=False)
    with pytest.raises(SurgeryError, match="density"):
        UnlearnConfig(density=1.5)
    other = tiny_llama()
    mask = saliency_mask(other, torch.randint(0, 99, (4, 8)), UnlearnConfig(method="ga", batch_size=2))
    with pytest.raises(SurgeryError, match="does not have|another model"):
        unlearn(model, UnlearnConfig(), forget, retain, mask=mask, progress=False)


def _cli_error(capsys, argv, pattern):
    from surgery.cli.main import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and pattern in err[0], err


def test_unlearn_recipe_writes_model_mask_split_and_metrics(tmp_path):
    import json

    from surgery.models import load_model
    from surgery.recipe import run_recipe
    from surgery.saliency import MaskSet

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: digits-mlp\nunlearn_stage:\n  data:\n    images: digits\n    forget_class: 3\n"
                      "  unlearn_modifiers:\n    SalUnModifier: {lr: 0.02, epochs: 5, batch_size: 32}\n")
    metrics = run_recipe(str(recipe), str(tmp_path / "out"))
    stage = metrics["stages"][0]
    assert stage["after"]["UA"] >= 95.0 and stage["before"]["UA"] <= 5.0
    model, _ = load_model(tmp_path / "out")
    forget, _ = load_split(tmp_path / "out" / "forget_split.npz")
    data = digits("train")
    assert bool((data.y[forget] == 3).all()) and forget.numel() == int((data.y == 3).sum())
    assert accuracy(model, data.subset(forget)) == pytest.approx(100.0 - stage["after"]["UA"])
    mask = MaskSet.load(tmp_path / "out" / "mask.safetensors")
    mask.check_model(model)
    assert json.loads((tmp_path / "out" / "forget_split.json").read_text())["forget_class"] == 3


@pytest.mark.parametrize("body,pattern", [
    ("    forget_class: 12\n", "forget class 12 does not exist"),
    ("    forget_fraction: 0.0\n", "forget_fraction: Input should be greater than 0"),
    ("    forget_class: 3\n", "density: Input should be less than or equal to 1"),
])
def test_bad_unlearn_recipes_fail_in_one_line_and_write_nothing(tmp_path, capsys, body, pattern):
    density = "1.5" if "density" in pattern else "0.5"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: digits-mlp\nunlearn_stage:\n  data:\n    images: digits\n" + body +
                      f"  unlearn_modifiers:\n    SalUnModifier: {{density: {density}, epochs: 1}}\n")
    _cli_error(capsys, ["run", recipe, "--output", tmp_path / "out"], pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]
