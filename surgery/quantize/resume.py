"""What a quantization checkpoint holds per finished block, on top of `surgery.checkpoint`: the
block's weights (LoRA included), each layer's grid, and the next block's inputs."""
from __future__ import annotations

import json

import torch
from torch import nn

from surgery.checkpoint import Checkpoint
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import BlockInputs, module_device, rebind
from surgery.models.modules import set_module
from surgery.quantize.lora import LoRALinear
from surgery.quantize.result import LayerQuant, QuantResult


def commit(ckpt: Checkpoint, index: int, model: nn.Module, adapter: DecoderAdapter, result: QuantResult,
           q_in: BlockInputs, fp_in: BlockInputs | None) -> None:
    prefix = adapter.block_name(index) + "."
    tensors = {f"sd.{k}": v for k, v in adapter.layers[index].state_dict().items()}
    lora = {}
    for name, lq in result.layers.items():
        if name.startswith(prefix):
            tensors[f"scale.{name}"] = lq.scale
            tensors[f"zero.{name}"] = lq.zero
            tensors[f"meta.{name}"] = torch.tensor([lq.bits, lq.group_size, int(lq.per_channel)])
            mod = model.get_submodule(name)
            if isinstance(mod, LoRALinear):
                lora[name] = [mod.rank, mod.scaling]
    meta = {"lora": json.dumps(lora), "history": json.dumps(result.history.get(index, {}))}
    inputs = {f"q.{j}": h for j, h in enumerate(q_in.hidden)}
    if fp_in is not None:
        inputs.update({f"fp.{j}": h for j, h in enumerate(fp_in.hidden)})
    ckpt.commit(index, tensors, meta, inputs)


def restore(ckpt: Checkpoint, model: nn.Module, adapter: DecoderAdapter, result: QuantResult,
            q_in: BlockInputs, carries_fp: bool) -> tuple[int, BlockInputs, BlockInputs | None]:
    """Load blocks 0..done into `model` and `result`; return (next block, q inputs, fp inputs)."""
    for i in range(ckpt.done + 1):
        tensors, meta = ckpt.step(i)
        for name, (rank, scaling) in json.loads(meta["lora"]).items():
            old = model.get_submodule(name)
            set_module(model, name, LoRALinear(old.in_features, old.out_features, old.bias is not None, int(rank),
                                               float(scaling), device=old.weight.device, dtype=old.weight.dtype))
        adapter.layers[i].load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("sd.")}, strict=True)
        for key in tensors:
            if key.startswith("scale."):
                name = key[len("scale."):]
                bits, gs, per_channel = tensors[f"meta.{name}"].tolist()
                result.layers[name] = LayerQuant(int(bits), int(gs), tensors[key], tensors[f"zero.{name}"],
                                                 bool(per_channel))
        result.history[i] = json.loads(meta.get("history", "{}"))
    saved = ckpt.inputs()
    n, nxt = len(q_in), ckpt.done + 1
    q = q_in.with_hidden([saved[f"q.{j}"] for j in range(n)], nxt)
    fp = q_in.with_hidden([saved[f"fp.{j}"] for j in range(n)], nxt) if carries_fp else None
    return nxt, q, fp


def release(ckpt: Checkpoint, index: int, adapter: DecoderAdapter, q_in: BlockInputs,
            fp_in: BlockInputs | None) -> tuple[BlockInputs, BlockInputs | None]:
    """Point block `index` and the next block's inputs at the committed files (memory-mapped): what
    memory held for them is freed."""
    tensors, _ = ckpt.step(index)
    block = adapter.layers[index]
    if module_device(block).type == "cpu":
        rebind(block, {k[3:]: v for k, v in tensors.items() if k.startswith("sd.")})
    saved = ckpt.inputs()
    n = len(q_in)
    if all(h.device.type == "cpu" for h in q_in.hidden):
        q_in = q_in.with_hidden([saved[f"q.{j}"] for j in range(n)])
        if fp_in is not None:
            fp_in = fp_in.with_hidden([saved[f"fp.{j}"] for j in range(n)])
    return q_in, fp_in
