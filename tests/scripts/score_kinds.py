"""Run under torchrun: every rank scores the same tiny models on the same batches (sharded by the
scorer); rank 0 writes the maps. Used by tests/test_distributed.py."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import image_batches, tiny_cnn, tiny_llama, token_batches  # noqa: E402

from surgery import dist, score  # noqa: E402


def main(out: Path) -> None:
    acc = Accelerator(cpu=True)  # gloo process group from torchrun's environment
    assert dist.world_size() == 2, f"expected 2 processes, got {dist.world_size()}"
    maps = {}
    for kind in ("grad", "abs_grad", "fisher", "taylor"):
        maps[f"llama-{kind}"] = score(tiny_llama(), token_batches(n=5), kind=kind, progress=False)
        maps[f"cnn-{kind}"] = score(tiny_cnn(), image_batches(n=5), loss="neg_ce", kind=kind,
                                    progress=False)
    if acc.is_main_process:
        for name, smap in maps.items():
            smap.save(out / f"{name}.safetensors")
    acc.wait_for_everyone()
    dist.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
