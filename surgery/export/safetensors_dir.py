"""A model's tensors in a folder as transformers lays them out: `model.safetensors`, or shards of at
most `max_shard_bytes` with `model.safetensors.index.json` — and read back the same way."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from surgery.errors import SurgeryError
from surgery.io import load_tensors

INDEX = "model.safetensors.index.json"
DEFAULT_SHARD = 5 * 1024**3


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write_state(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = DEFAULT_SHARD) -> list[str]:
    """Write `state` (CPU, contiguous) into `folder`; return the file names written."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        v = v.detach().to("cpu").contiguous()
        if shards[-1] and size + _nbytes(v) > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += _nbytes(v)
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(_nbytes(v) for s in shards for v in s.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                           indent=2) + "\n")
    return [*names, INDEX]


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder written by `write_state` (or by `save_pretrained`)."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        files = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        if not (folder / f).is_file():
            raise SurgeryError(f"{folder}: weight file {f} is missing")
        out.update(load_tensors(folder / f)[0])
    return out
