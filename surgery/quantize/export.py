"""Export a quantized model as a compressed-tensors `pack-quantized` folder (+ a PEFT adapter).

Our grid is q ∈ [0, 2^b − 1] with value (q − zp)·scale. compressed-tensors stores signed codes,
q_ct = q − 2^(b−1), and a signed zero point zp_ct = zp − 2^(b−1): (q_ct − zp_ct)·scale is the
same number, computed the same way, so the dequantized export equals our weights bit for bit.
Codes are packed along the input dimension and zero points along the output dimension, with
compressed-tensors' own `pack_to_int32`. LoRA adapters (ApiQ) go to `adapter/` in PEFT's layout.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from surgery.errors import SurgeryError
from surgery.io import atomic_dir, load_tensors
from surgery.quantize.lora import LoRALinear
from surgery.quantize.result import QuantResult

FORMAT = "pack-quantized"


def _ct() -> Any:
    try:
        import compressed_tensors
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    except ImportError:
        raise SurgeryError("export needs compressed-tensors: pip install 'surgery[export]'") from None
    return compressed_tensors.__version__, pack_to_int32, unpack_from_int32


def quantization_config(model: nn.Module, result: QuantResult) -> dict[str, Any]:
    """The `quantization_config` block of config.json for this result."""
    version, _, _ = _ct()
    by_scheme: dict[tuple[int, int | None], list[str]] = {}
    for name, lq in result.layers.items():  # one group per row = compressed-tensors' "channel"
        gs = lq.group_size if lq.scale.shape[1] > 1 else None
        by_scheme.setdefault((lq.bits, gs), []).append(name)
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")}
    groups = {}
    for i, ((bits, gs), names) in enumerate(sorted(by_scheme.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))):
        whole = len(by_scheme) == 1 and set(names) == linears
        targets = ["Linear"] if whole else ["re:^" + n.replace(".", r"\.") + "$" for n in names]
        groups[f"group_{i}"] = {
            "targets": targets,
            "weights": {"num_bits": bits, "type": "int", "symmetric": False, "group_size": gs,
                        "strategy": "group" if gs else "channel", "dynamic": False, "actorder": None,
                        "observer": "minmax", "observer_kwargs": {}, "block_structure": None},
            "input_activations": None,
            "output_activations": None,
            "format": FORMAT,
        }
    unquantized = sorted({n for n in linears if n not in result.layers} | {"lm_head"})
    # `dequantize: true` makes transformers decompress on load. Without it, transformers 5.24 with
    # compressed-tensors 0.20 builds the compressed skeleton with an *unpacked* zero point and
    # refuses every asymmetric pack-quantized checkpoint (a shape mismatch; see
    # tests/test_quant_export.py::test_upstream_asymmetric_skeleton_bug). vLLM ignores the key.
    return {"quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
            "config_groups": groups, "ignore": unquantized, "kv_cache_scheme": None,
            "sparsity_config": {}, "version": version, "dequantize": True}


def compressed_state_dict(model: nn.Module, result: QuantResult) -> dict[str, torch.Tensor]:
    """The model's tensors with every quantized weight replaced by its packed form (no LoRA)."""
    _, pack, _ = _ct()
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
          if not (k.endswith(".lora_A") or k.endswith(".lora_B"))}
    for name, lq in result.layers.items():
        w = sd.pop(f"{name}.weight")
        offset = 1 << (lq.bits - 1)
        q = lq.codes(w)
        sd[f"{name}.weight_packed"] = pack((q - offset).to(torch.int8), lq.bits)
        sd[f"{name}.weight_scale"] = lq.scale.detach().cpu().to(w.dtype).contiguous()
        sd[f"{name}.weight_zero_point"] = pack((lq.zero.cpu().round().to(torch.int32) - offset).to(torch.int8),
                                               lq.bits, packed_dim=0)
        sd[f"{name}.weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int32)
    return sd


def _adapter(model: nn.Module, result: QuantResult) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    mods = result.lora_modules(model)
    if not mods:
        return None
    cfg = result.config
    tensors = {}
    for name, m in mods.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = m.lora_A.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = m.lora_B.detach().cpu().contiguous()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora_rank,
              "lora_alpha": cfg.lora_alpha, "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted(mods), "fan_in_fan_out": False, "inference_mode": True,
              "init_lora_weights": True, "base_model_name_or_path": None}
    return config, tensors


def export(model: nn.Module, result: QuantResult, path: str | os.PathLike, tokenizer: Any = None,
           overwrite: bool = False) -> Path:
    """Write the compressed-tensors folder (and `adapter/` for LoRA) atomically."""
    sd = compressed_state_dict(model, result)
    qcfg = quantization_config(model, result)
    adapter = _adapter(model, result)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        config = model.config.to_dict()
        config["quantization_config"] = qcfg
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(tmp))
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if adapter is not None:
            (tmp / "adapter").mkdir()
            (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(adapter[0], indent=2) + "\n")
            save_file(adapter[1], str(tmp / "adapter" / "adapter_model.safetensors"))
        (tmp / "surgery_quant.json").write_text(json.dumps({
            **result.summary(), "config": result.config.to_dict(),
            "theoretical_bits": result.theoretical_bits(32 if sd and _scale_bits(sd) == 32 else 16),
        }, indent=2) + "\n")
    return Path(path)


def _scale_bits(sd: dict[str, torch.Tensor]) -> int:
    scale = next(v for k, v in sd.items() if k.endswith(".weight_scale"))
    return scale.element_size() * 8


def dequantized_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Unpack and dequantize every packed layer of an exported folder (our own reader)."""
    _, _, unpack = _ct()
    folder = Path(path)
    tensors, _ = load_tensors(folder / "model.safetensors")
    qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    out = {}
    for key in [k for k in tensors if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        shape = torch.Size(tensors[f"{name}.weight_shape"].tolist())
        scale = tensors[f"{name}.weight_scale"]
        gs = shape[1] // scale.shape[1]
        scheme = next(g for g in qcfg["config_groups"].values() if _targets(g, name))
        bits = scheme["weights"]["num_bits"]
        q = unpack(tensors[key], bits, shape)
        # unpack along dim 1 of the transpose, in standard strides: compressed-tensors 0.20's own
        # packed_dim=0 path fails on a single packed row ([1, n] transposes to stride (1, n))
        zp_t = tensors[f"{name}.weight_zero_point"].t()
        zp_t = torch.empty(zp_t.shape, dtype=zp_t.dtype).copy_(zp_t)
        zp = unpack(zp_t, bits, torch.Size([scale.shape[1], scale.shape[0]])).t()
        g = q.to(scale.dtype).reshape(shape[0], -1, gs)
        out[name] = ((g - zp.to(scale.dtype).unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(shape)
    return out


def _targets(group: dict[str, Any], name: str) -> bool:
    import re

    return any(t == "Linear" or (t.startswith("re:") and re.match(t[3:], name)) for t in group["targets"])


def packed_bytes(path: str | os.PathLike) -> int:
    """Bytes the quantized layers take in the safetensors file (codes, scales, zero points, shapes)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as f:
        for k in f.keys():
            if k.endswith((".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape")):
                t = f.get_slice(k)
                n = 1
                for d in t.get_shape():
                    n *= d
                total += n * {"I32": 4, "F32": 4, "BF16": 2, "F16": 2, "I8": 1}[t.get_dtype()]
    return total


__all__ = ["LoRALinear", "compressed_state_dict", "dequantized_weights", "export", "packed_bytes",
           "quantization_config"]
