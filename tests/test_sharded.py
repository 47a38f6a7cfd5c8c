"""FSDP2 (`fully_shard`) with 2 real processes (torchrun, gloo on CPU): the sharded saliency map,
its masks selected across ranks, and masked unlearning on the local shards (and under DDP) equal
what one process computes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_llama, token_batches
from surgery import SaliencyMap, UnlearnConfig, score, unlearn
from surgery.saliency import MaskSet
from surgery.saliency.topk import topk_masks
from test_distributed import assert_same_map, tiny_folder, torchrun

pytestmark = pytest.mark.multi_process
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "scripts"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    from sharded import UNLEARN, unlearn_windows

    out = tmp_path_factory.mktemp("sharded")
    forget, retain = unlearn_windows()
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = unlearn(model, UnlearnConfig(**UNLEARN), forget, retain, progress=False)
    result.mask.save(out / "one-mask.safetensors")
    torchrun([str(HERE / "scripts" / "sharded.py"), str(out)])
    one = {n: p.detach().clone() for n, p in model.named_parameters()}
    return out, {"before": before, "one": one, "mask": result.mask,
                 "facts": json.loads((out / "facts.json").read_text())}


def test_sharded_scores_equal_one_process_and_stay_sharded(run):
    out, r = run
    for kind in ("grad", "abs_grad", "fisher", "taylor"):
        want = score(tiny_llama(), token_batches(n=5), kind=kind, progress=False)
        got = SaliencyMap.load(out / f"fsdp-{kind}.safetensors", model=tiny_llama())  # same weights digest
        assert_same_map(got, want)
    rows = r["facts"]["local_rows"]  # rank 0 held ⌈rows/2⌉ of every tensor, never the whole map
    assert rows["model.embed_tokens.weight"] == [50, 99]
    assert all(local == -(-full // 2) for local, full in rows.values())
    want = score(tiny_llama(), token_batches(n=5), kind="abs_grad", progress=False)
    assert r["facts"]["numel"] == want.numel
    assert r["facts"]["per_tensor"] == pytest.approx(want.per_tensor(), rel=1e-5)


def test_masks_selected_across_shards_are_the_exact_top_k(run):
    out, _ = run
    smap = SaliencyMap.load(out / "fsdp-abs_grad.safetensors")
    for file, scope in (("fsdp-mask.safetensors", "global"), ("fsdp-mask-tensor.safetensors", "tensor")):
        got = MaskSet.load(out / file)
        want = smap.mask(0.3, scope)  # one process, on the very scores the ranks held
        assert set(got) == set(want)
        for n in want:
            assert torch.equal(got[n], want[n]), (scope, n)
    # a threshold inside a run of ties: ranks split the ties in global position order
    coarse = SaliencyMap.load(out / "coarse.safetensors")
    names = [n for n, _ in tiny_llama().named_parameters()]  # the ranks' tensor order (ties follow it)
    k = round(0.37 * coarse.numel)
    flat = torch.cat([coarse[n].reshape(-1) for n in names])
    kth = flat.topk(k).values.min()
    assert int((flat == kth).sum()) > int((flat > kth).sum() - k + (flat == kth).sum()) > 0  # ties split
    got = MaskSet.load(out / "coarse-mask.safetensors")
    want = topk_masks([coarse[n] for n in names], k)
    assert got.selected == k
    for n, w in zip(names, want):
        assert torch.equal(got[n], w), n


def test_masked_unlearning_on_shards_and_under_ddp(run):
    out, r = run
    mask: MaskSet = r["mask"]
    for name in ("fsdp-given", "ddp"):
        got = load_file(out / f"unlearned-{name}.safetensors")
        for n, before in r["before"].items():
            m = mask[n]
            assert torch.equal(got[n][~m], before[~m]), (name, n)  # bit for bit outside the mask
            torch.testing.assert_close(got[n], r["one"][n], rtol=1e-4, atol=1e-6, msg=f"{name} {n}")
        assert any(not torch.equal(got[n], b) for n, b in r["before"].items())
    # the engine's own mask, scored and selected on the shards
    own = MaskSet.load(out / "fsdp-own-mask.safetensors")
    assert r["facts"]["own_trainable"] == own.selected == mask.selected
    got = load_file(out / "unlearned-fsdp-own.safetensors")
    for n, before in r["before"].items():
        assert torch.equal(got[n][~own[n]], before[~own[n]]), n
    agree = sum(int((own[n] == mask[n]).sum()) for n in mask) / mask.numel
    assert agree > 0.999  # the same mask up to near-threshold float summation order


def test_cli_score_with_fsdp_equals_one_process(tmp_path):
    from surgery.cli.main import main

    model_dir, corpus = tiny_folder(tmp_path, 12000)
    common = ["score", "--model", str(model_dir), "--data", str(corpus), "--seqlen", "32",
              "--max-windows", "7", "--batch-size", "3", "--kind", "fisher", "--mask-density", "0.25"]
    assert main(common + ["--out", str(tmp_path / "one.safetensors")]) == 0
    assert main(common + ["--fsdp", "--out", str(tmp_path / "x.safetensors")]) == 2  # not under torchrun
    assert not (tmp_path / "x.safetensors").exists()
    torchrun(["-m", "surgery.cli.main", *common, "--cpu", "--fsdp", "--packed",
              "--out", str(tmp_path / "two.safetensors")])
    one = SaliencyMap.load(tmp_path / "one.safetensors")
    two = SaliencyMap.load(tmp_path / "two.safetensors")
    assert one.identity == two.identity and one.batches == 3 and one.samples == 7
    assert_same_map(two, one)
    m1, m2 = (MaskSet.load(tmp_path / f"{s}.mask.safetensors") for s in ("one", "two"))
    assert m1.selected == m2.selected == round(0.25 * one.numel)
    assert sum(int((m1[n] != m2[n]).sum()) for n in m1) <= 4  # near-threshold summation order only
