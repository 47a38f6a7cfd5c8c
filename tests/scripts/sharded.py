"""Run under torchrun (2 ranks, gloo): saliency scoring, masks and masked unlearning on an
FSDP2-sharded model (and unlearning under DDP). Rank 0 writes what tests/test_sharded.py checks."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_llama, token_batches  # noqa: E402

from surgery import SaliencyMap, UnlearnConfig, dist, score, unlearn  # noqa: E402
from surgery.saliency import MaskSet  # noqa: E402

KINDS = ("grad", "abs_grad", "fisher", "taylor")
UNLEARN = dict(method="graddiff", use_mask=True, density=0.2, epochs=2, lr=1e-3, batch_size=4,
               optimizer="adamw", weight_decay=0.1)


def sharded_llama() -> torch.nn.Module:
    model = tiny_llama()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def unlearn_windows() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 99, (8, 12), generator=g), torch.randint(0, 99, (8, 12), generator=g)


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole (a collective for DTensors), cloned."""
    out = {}
    for n, t in model.state_dict().items():
        out[n] = (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()
    return out


def main(out: Path) -> None:
    Accelerator(cpu=True)  # gloo process group from torchrun's environment
    assert dist.world_size() == 2
    facts: dict[str, object] = {}
    # 1. scoring on shards (3-row batches: ranks take 2 and 1 rows, weighted by their share)
    for kind in KINDS:
        model = sharded_llama()
        smap = score(model, token_batches(n=5), kind=kind, progress=False)
        smap.identify(model, seed=0)
        if kind == "abs_grad":
            facts["local_rows"] = {n: [t.shape[0], s.shape[0]] for (n, t), s in
                                   zip(smap.items(), smap.shards.values())}
            facts["per_tensor"] = smap.per_tensor()
            facts["numel"] = smap.numel
            smap.mask(0.3).save(out / "fsdp-mask.safetensors", packed=True)
            smap.mask(0.3, scope="tensor").save(out / "fsdp-mask-tensor.safetensors")
            # ties: scores rounded to a few values, so the threshold falls inside a run of ties
            coarse = SaliencyMap({n: (t * 50).round() for n, t in smap.items()}, kind="abs_grad", loss="x",
                                 shards=smap.shards)
            coarse.save(out / "coarse.safetensors")
            coarse.mask(0.37).save(out / "coarse-mask.safetensors")
        smap.save(out / f"fsdp-{kind}.safetensors")
    # 2. masked unlearning: FSDP2 with a whole mask from a file, FSDP2 with its own sharded mask, DDP
    forget, retain = unlearn_windows()
    mask = MaskSet.load(out / "one-mask.safetensors")
    model = sharded_llama()
    unlearn(model, UnlearnConfig(**UNLEARN), forget, retain, mask=mask, progress=False)
    fsdp_given = full_state(model)
    model = sharded_llama()
    result = unlearn(model, UnlearnConfig(**UNLEARN), forget, retain, progress=False)
    result.mask.save(out / "fsdp-own-mask.safetensors")
    facts["own_trainable"] = result.trainable
    fsdp_own = full_state(model)
    model = tiny_llama()
    unlearn(model, UnlearnConfig(**UNLEARN), forget, retain, mask=mask, progress=False)
    ddp = full_state(model)
    if dist.is_main():
        from safetensors.torch import save_file

        for name, state in (("fsdp-given", fsdp_given), ("fsdp-own", fsdp_own), ("ddp", ddp)):
            save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"unlearned-{name}.safetensors"))
        (out / "facts.json").write_text(json.dumps(facts))
    dist.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
