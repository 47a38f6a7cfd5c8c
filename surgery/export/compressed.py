"""compressed-tensors `pack-quantized` folders: the writer and our own reader.

Our grid stores codes q ∈ [0, 2^b − 1] and integer zero points; compressed-tensors stores both
shifted by 2^(b−1) (signed). The shift cancels in (q − z)·s, so the dequantized export equals the
in-memory weights bit for bit. Codes are packed along the input dimension and zero points along
the output dimension, with compressed-tensors' own `pack_to_int32`.

One scheme per folder. transformers 5.24 decompresses every dense layer of a checkpoint with the
first config group's scheme (`get_dense_scheme` in its compressed-tensors integration), and its
non-decompressing path cannot take packed asymmetric zero points; a checkpoint with two schemes
therefore does not load in plain transformers. So the scheme that covers most weights is packed and
the layers quantized otherwise (per-channel fallbacks of widths the group size does not divide) are
stored as their dequantized on-grid weights, listed in `ignore` — exact, and loadable everywhere.
The config carries `dequantize: true` (decompress on load; vLLM ignores the key), because the
compressed skeleton of asymmetric checkpoints fails to build in transformers 5.24 + compressed-tensors
0.20 (see tests/test_quant_export.py::test_upstream_asymmetric_skeleton_bug).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from surgery.errors import SurgeryError
from surgery.export.grid import codes, dequantize_groups, grouped
from surgery.export.safetensors_dir import DEFAULT_SHARD, read_state, write_state

FORMAT = "pack-quantized"
SUFFIXES = (".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape")


class Grid(Protocol):
    """What a quantizer hands the exporter for one layer."""

    bits: int
    group_size: int
    scale: torch.Tensor  # [out, in/group]
    zero: torch.Tensor  # [out, in/group], integer-valued


@dataclass(frozen=True, order=True)
class Scheme:
    bits: int
    group_size: int | None  # None: one group per row (compressed-tensors' "channel")

    @property
    def name(self) -> str:
        return f"W{self.bits} " + ("per-channel" if self.group_size is None else f"g{self.group_size}")


def schemes_of(g: Grid) -> list[Scheme]:
    """Every layout that stores this grid exactly: its groups, and per channel when it has one group."""
    out = [Scheme(g.bits, g.group_size)]
    if g.scale.shape[1] == 1:
        out.append(Scheme(g.bits, None))
    return out


def ct_helpers() -> Any:
    """(compressed-tensors version, pack_to_int32, unpack_from_int32), or a one-line error."""
    try:
        import compressed_tensors
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    except ImportError:
        raise SurgeryError("export needs compressed-tensors: pip install compressed-tensors") from None
    return compressed_tensors.__version__, pack_to_int32, unpack_from_int32


def _packable(g: Grid) -> bool:
    """compressed-tensors 0.20 cannot unpack zero points that pack into a single int32 row
    (out_features · bits ≤ 32: only in toy models); such layers are stored dequantized."""
    return g.scale.shape[0] * g.bits > 32


def split_schemes(grids: Mapping[str, Grid]) -> tuple[Scheme, list[str], list[str]]:
    """(the packed scheme, its layers, the layers stored dequantized)."""
    weight: dict[Scheme, int] = {}
    for g in grids.values():
        if _packable(g):
            for s in schemes_of(g):
                weight[s] = weight.get(s, 0) + g.scale.shape[0] * g.scale.shape[1] * g.group_size
    if not weight:
        raise SurgeryError("no layer can be packed (every layer has too few rows for compressed-tensors)")
    main = max(weight, key=lambda s: (weight[s], s.group_size is None))  # ties: per channel
    packed = [n for n, g in grids.items() if main in schemes_of(g) and _packable(g)]
    return main, packed, [n for n in grids if n not in packed]


def quantization_config(model: nn.Module, scheme: Scheme, packed: list[str]) -> dict[str, Any]:
    """The `quantization_config` block of config.json: one group, explicit targets unless every
    decoder linear is in it."""
    version, _, _ = ct_helpers()
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    head = {n for n in linears if n.endswith("lm_head")}
    whole = set(packed) == linears - head
    targets = ["Linear"] if whole else ["re:^" + re.escape(n) + "$" for n in packed]
    group = {"targets": targets,
             "weights": {"num_bits": scheme.bits, "type": "int", "symmetric": False,
                         "group_size": scheme.group_size, "strategy": "group" if scheme.group_size else "channel",
                         "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {},
                         "block_structure": None},
             "input_activations": None, "output_activations": None, "format": FORMAT}
    return {"quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
            "config_groups": {"group_0": group}, "ignore": sorted(linears - set(packed)), "kv_cache_scheme": None,
            "sparsity_config": {}, "version": version, "dequantize": True}


def _tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys that alias an earlier key (tied embeddings): not written twice."""
    seen: dict[int, str] = {}
    dup = set()
    state = model.state_dict(keep_vars=True)
    for k, v in state.items():
        ptr = v.data_ptr() if v.numel() else id(v)
        if ptr in seen and v.shape == state[seen[ptr]].shape:
            dup.add(k)
        else:
            seen[ptr] = k
    return dup


def compressed_state_dict(model: nn.Module, grids: Mapping[str, Grid]) -> tuple[dict[str, torch.Tensor], Scheme,
                                                                                list[str], list[str]]:
    """The model's tensors with the packed layers' weights replaced by their packed form (LoRA and
    tied duplicates left out); also the scheme, the packed and the dequantized layer names."""
    _, pack, _ = ct_helpers()
    skip = _tied_keys(model)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
          if k not in skip and not k.endswith((".lora_A", ".lora_B"))}
    scheme, packed, dense = split_schemes(grids)
    for name in packed:
        g = grids[name]
        w = sd.pop(f"{name}.weight")
        offset = 1 << (g.bits - 1)
        gs = w.shape[1] // g.scale.shape[1]
        q = codes(grouped(w.float(), gs), g.scale.float().cpu().unsqueeze(-1), g.zero.float().cpu().unsqueeze(-1),
                  g.bits).reshape(w.shape).to(torch.int32)
        sd[f"{name}.weight_packed"] = pack((q - offset).to(torch.int8), g.bits)
        sd[f"{name}.weight_scale"] = g.scale.detach().cpu().to(w.dtype).contiguous()
        sd[f"{name}.weight_zero_point"] = pack((g.zero.cpu().round().to(torch.int32) - offset).to(torch.int8),
                                               g.bits, packed_dim=0)
        sd[f"{name}.weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int32)
    return sd, scheme, packed, dense


def write_compressed(model: nn.Module, grids: Mapping[str, Grid], folder: Path,
                     max_shard_bytes: int = DEFAULT_SHARD) -> dict[str, Any]:
    """Weights and `quantization_config` into `folder` (its config.json written already by
    `export.folders.write_config`); returns what was packed and what was stored dequantized."""
    if not grids:
        raise SurgeryError("nothing to export: no quantized layer")
    sd, scheme, packed, dense = compressed_state_dict(model, grids)
    write_state(sd, folder, max_shard_bytes)
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text())
    config["quantization_config"] = quantization_config(model, scheme, packed)
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {"scheme": scheme.name, "packed_layers": len(packed), "dequantized_layers": sorted(dense),
            "dequantized_schemes": sorted({schemes_of(grids[n])[-1].name for n in dense})}


def dequantized_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Unpack and dequantize every packed layer of an exported folder (our own reader)."""
    _, _, unpack = ct_helpers()
    folder = Path(folder)
    tensors = read_state(folder)
    qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    out = {}
    for key in [k for k in tensors if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        shape = torch.Size(tensors[f"{name}.weight_shape"].tolist())
        scale = tensors[f"{name}.weight_scale"]
        group = next((g for g in qcfg["config_groups"].values() if targets(g, name)), None)
        if group is None:
            raise SurgeryError(f"{folder}: no config group targets {name}")
        bits = group["weights"]["num_bits"]
        q = unpack(tensors[key], bits, shape)
        # unpack along dim 1 of the transpose, in standard strides: compressed-tensors 0.20's own
        # packed_dim=0 path fails on a single packed row ([1, n] transposes to stride (1, n))
        zp_t = tensors[f"{name}.weight_zero_point"].t()
        zp_t = torch.empty(zp_t.shape, dtype=zp_t.dtype).copy_(zp_t)
        zp = unpack(zp_t, bits, torch.Size([scale.shape[1], scale.shape[0]])).t()
        out[name] = dequantize_groups(q, scale, zp)
    return out


def targets(group: dict[str, Any], name: str) -> bool:
    return any(t == "Linear" or (t.startswith("re:") and re.match(t[3:], name)) for t in group["targets"])


def packed_bytes(folder: str | Path) -> int:
    """Bytes the packed layers take (codes, scales, zero points, shapes)."""
    return sum(t.numel() * t.element_size() for k, t in read_state(Path(folder)).items() if k.endswith(SUFFIXES))
