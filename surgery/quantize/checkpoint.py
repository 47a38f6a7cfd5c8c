"""Per-block checkpoints of a long quantization run, so a killed run resumes after its last block."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from surgery import dist
from surgery.errors import require
from surgery.io import atomic_path, load_tensors, save_tensors
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import BlockInputs
from surgery.quantize.lora import LoRALinear


class BlockCheckpoint:
    """`state.json` (config fingerprint, last finished block), `block_<i>.safetensors` (the block's
    weights, LoRA and grids), `inputs.safetensors` (the next block's inputs)."""

    def __init__(self, folder: str, fingerprint: str) -> None:
        self.dir = Path(folder)
        self.fingerprint = fingerprint
        self.done = -1
        state = self.dir / "state.json"
        if state.exists():
            data = json.loads(state.read_text())
            require(data.get("fingerprint") == fingerprint,
                    f"{self.dir} holds checkpoints of another configuration; use another resume_dir")
            require(data.get("world", 1) == dist.world_size(),
                    f"{self.dir} was written by {data.get('world', 1)} processes; resume it with as many")
            self.done = int(data["done"])

    def save(self, index: int, model: nn.Module, adapter: DecoderAdapter, result, q_in: BlockInputs,
             fp_in: BlockInputs | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{adapter.prefix}.{index}."
        tensors = {f"sd.{k}": v for k, v in adapter.layers[index].state_dict().items()}
        lora = {}
        for name, lq in result.layers.items():
            if name.startswith(prefix):
                tensors[f"scale.{name}"] = lq.scale
                tensors[f"zero.{name}"] = lq.zero
                tensors[f"meta.{name}"] = torch.tensor([lq.bits, lq.group_size])
                mod = model.get_submodule(name)
                if isinstance(mod, LoRALinear):
                    lora[name] = [mod.rank, mod.scaling]
        meta = {"lora": json.dumps(lora), "history": json.dumps(result.history.get(index, {}))}
        inputs = {f"q.{j}": h for j, h in enumerate(q_in.hidden)}
        if fp_in is not None:
            inputs.update({f"fp.{j}": h for j, h in enumerate(fp_in.hidden)})
        save_tensors(inputs, self.dir / dist.per_rank_name("inputs"))  # every rank its own rows
        dist.barrier()
        if dist.is_main():
            save_tensors(tensors, self.dir / f"block_{index}.safetensors", meta)
            with atomic_path(self.dir / "state.json") as tmp:  # written last: the commit point
                tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "done": index,
                                           "world": dist.world_size()}))
        dist.barrier()
        self.done = index

    def restore(self, model: nn.Module, adapter: DecoderAdapter, result,
                q_in: BlockInputs) -> tuple[int, BlockInputs, BlockInputs]:
        """Load blocks 0..done into `model` and `result`; return (next block, q inputs, fp inputs)."""
        from surgery.quantize.engine import set_module
        from surgery.quantize.result import LayerQuant

        for i in range(self.done + 1):
            tensors, meta = load_tensors(self.dir / f"block_{i}.safetensors")
            for name, (rank, scaling) in json.loads(meta["lora"]).items():
                old = model.get_submodule(name)
                set_module(model, name, LoRALinear(old.in_features, old.out_features, old.bias is not None,
                                                   int(rank), float(scaling), device=old.weight.device,
                                                   dtype=old.weight.dtype))
            sd = {k[3:]: v for k, v in tensors.items() if k.startswith("sd.")}
            adapter.layers[i].load_state_dict(sd, strict=True)
            for key in tensors:
                if key.startswith("scale."):
                    name = key[len("scale."):]
                    bits, gs = tensors[f"meta.{name}"].tolist()
                    result.layers[name] = LayerQuant(int(bits), int(gs), tensors[key], tensors[f"zero.{name}"])
            result.history[i] = json.loads(meta.get("history", "{}"))
        inputs, _ = load_tensors(self.dir / dist.per_rank_name("inputs"))
        n = len(q_in)
        q = q_in.with_hidden([inputs[f"q.{j}"] for j in range(n)])
        fp = q_in.with_hidden([inputs[f"fp.{j}"] for j in range(n)]) if "fp.0" in inputs else q
        return self.done + 1, q, fp
