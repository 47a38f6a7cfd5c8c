"""Top-k masks: exact counts, deterministic ties, equality with a sort-based reference, file forms."""
from __future__ import annotations

import pytest
import torch

from surgery import SaliencyMap, SurgeryError
from surgery.saliency import MaskSet, kth_largest, select_top, topk_masks


def reference_masks(tensors, k):
    """Brute force: a stable sort of (−|value|, global position); the first k are selected."""
    flat = torch.cat([t.reshape(-1).abs().double() for t in tensors])
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    sel = torch.zeros(flat.numel(), dtype=torch.bool)
    sel[order[:k]] = True
    out, start = [], 0
    for t in tensors:
        out.append(sel[start : start + t.numel()].view(t.shape))
        start += t.numel()
    return out


def make_tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(17, 9, generator=g), torch.randn(33, generator=g) * 3,
            torch.randn(4, 5, 6, generator=g).round(decimals=1)]  # rounding makes many ties


CUDA_DIGITS = ((24, 7), (16, 8), (8, 8), (0, 8))  # the GPU path's four 8-bit passes, run here on CPU


PATHS = {"cpu-digits": dict(method="radix"), "cuda-digits": dict(method="radix", digits=CUDA_DIGITS),
         "select": dict(method="select")}  # every threshold path, run here on CPU


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("k", [1, 7, 100, 250, 305, 306])
def test_topk_equals_sorted_reference(k, path):
    tensors = make_tensors()
    got = topk_masks(tensors, k, chunk=50, **PATHS[path])  # a small chunk exercises the streaming path
    want = reference_masks(tensors, k)
    assert sum(int(m.sum()) for m in got) == k
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_ties_go_to_earliest_positions():
    t = [torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5]), torch.tensor([2.0, 2.0, 3.0])]
    masks = topk_masks(t, 4)
    assert masks[0].tolist() == [False, True, True, True, False]
    assert masks[1].tolist() == [False, False, True]
    assert sum(int(m.sum()) for m in topk_masks([torch.zeros(10)], 3)) == 3  # all tied at zero


def test_kth_largest_matches_kthvalue_with_special_values():
    x = torch.cat([torch.randn(1000), torch.zeros(50), torch.tensor([1e-42, -1e-42, float("inf")]),
                   -torch.rand(100) * 1e-30])
    for k in (1, 2, 17, 500, 1100, x.numel()):
        for path in PATHS.values():
            thr = kth_largest([x[:600], x[600:]], k, **path)
            want = torch.kthvalue(x.abs(), x.numel() - k + 1).values
            assert thr.value == float(want)
            assert thr.count_gt == int((x.abs() > want).sum())


@pytest.mark.parametrize("path", list(PATHS))
def test_nan_is_refused(path):
    with pytest.raises(SurgeryError, match="NaN"):
        topk_masks([torch.tensor([1.0, float("nan"), 2.0])], 1, **PATHS[path])


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.73, 1.0])
def test_select_top_exact_counts(density):
    tensors = dict(zip("abc", make_tensors(1)))
    n = sum(t.numel() for t in tensors.values())
    glob = select_top(tensors, density, "global")
    assert sum(int(m.sum()) for m in glob.values()) == round(density * n)
    per = select_top(tensors, density, "tensor")
    for name, m in per.items():
        assert int(m.sum()) == round(density * tensors[name].numel())
        assert torch.equal(m, reference_masks([tensors[name]], round(density * tensors[name].numel()))[0])


@pytest.mark.parametrize("density", [0, -0.1, 1.5, float("nan"), "half"])
def test_density_outside_range_is_refused(density):
    with pytest.raises(SurgeryError, match="density"):
        select_top({"a": torch.ones(4)}, density)


@pytest.mark.parametrize("packed", [False, True])
def test_mask_file_round_trip(tmp_path, packed):
    smap = SaliencyMap(dict(zip("abc", make_tensors(2))), kind="abs_grad", loss="neg_ce")
    masks = smap.mask(0.3, "tensor")
    path = tmp_path / "m.safetensors"
    masks.save(path, packed=packed)
    back = MaskSet.load(path)
    assert list(back) == list(masks)
    for n in masks:
        assert back[n].dtype == torch.bool and torch.equal(back[n], masks[n])
    assert back.meta["scope"] == "tensor" and back.meta["packed"] == str(packed).lower()
    assert abs(float(back.meta["density"]) - masks.density) < 1e-12
    if packed:  # 8 weights per byte (+ header)
        unpacked = tmp_path / "u.safetensors"
        masks.save(unpacked)
        assert path.stat().st_size < unpacked.stat().st_size
