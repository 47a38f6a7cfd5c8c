"""Saliency maps survive a save/load round trip bit for bit; wrong models and bad files are refused."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama, tiny_qwen2, token_batches
from surgery import SaliencyMap, SurgeryError, score


def test_round_trip_bit_identical(tmp_path, llama):
    smap = score(llama, token_batches(), kind="fisher", description="random tokens", progress=False)
    path = tmp_path / "map.safetensors"
    smap.save(path)
    back = SaliencyMap.load(path, llama)
    assert (back.kind, back.loss, back.data, back.samples, back.batches) == \
        ("fisher", "causal_lm", "random tokens", 12, 4)
    for n in smap:
        assert torch.equal(back[n], smap[n])
    assert back.mask(0.2).selected == smap.mask(0.2).selected


def test_map_from_another_model_is_refused(tmp_path, llama):
    smap = score(tiny_qwen2(), token_batches(), kind="grad", include="mlp", progress=False)
    with pytest.raises(SurgeryError, match="another model"):
        smap.check_model(tiny_llama(intermediate_size=48))
    path = tmp_path / "q.safetensors"
    smap.save(path)
    with pytest.raises(SurgeryError, match="another model"):
        SaliencyMap.load(path, tiny_llama(intermediate_size=48))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_file_is_refused(tmp_path, llama, damage):
    path = tmp_path / "map.safetensors"
    score(llama, token_batches(), kind="grad", progress=False).save(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file" * 10)
    else:
        path.unlink()
    with pytest.raises(SurgeryError, match="corrupt|not found"):
        SaliencyMap.load(path)


def test_save_is_atomic(tmp_path, llama, monkeypatch):
    smap = score(llama, token_batches(), kind="grad", progress=False)
    import safetensors.torch

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(RuntimeError):
        smap.save(tmp_path / "map.safetensors")
    assert list(tmp_path.iterdir()) == []
