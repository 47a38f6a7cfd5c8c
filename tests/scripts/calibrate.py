"""Run under torchrun: GPTQ, ApiQ + saliency and the pruning search (supernet + fitness) on a tiny
Llama with data-parallel calibration; rank 0 writes the results. Used by tests/test_distributed.py.

The same function runs in one process in the test, so the two can be compared.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_llama  # noqa: E402

from surgery import dist  # noqa: E402
from surgery.prune import PruneConfig, SearchConfig, prune  # noqa: E402
from surgery.prune.units import dist_to_json  # noqa: E402
from surgery.quantize import ApiQConfig, GPTQConfig, quantize  # noqa: E402

PRUNE = dict(sparsity=0.5, batch_size=4, ffn_step=0.25, iterations=2, search_samples=8,
             search=SearchConfig(generations=3, offspring=4, survivors=[2, 1], stage_windows=[2, 4, 8], top_k=16))


def calib(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 99, (n, 16), generator=torch.Generator().manual_seed(seed))


def calibrate(resume: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """GPTQ and ApiQ + saliency state dicts, and the pruning search's result."""
    out: dict[str, torch.Tensor] = {}
    facts: dict = {}
    for name, cfg in {"gptq": GPTQConfig(num_bits=2, group_size=8, act_order=True),
                      "apiq": ApiQConfig(num_bits=2, group_size=8, epochs=2, lora_rank=2, saliency={"lam": 10.0})}.items():
        model = tiny_llama()
        quantize(model, cfg, calib=calib(), batch_size=4, resume_dir=str(resume / name) if resume else None,
                 progress=False)
        out.update({f"{name}.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()})
    model = tiny_llama()
    result = prune(model, PruneConfig(**PRUNE), calib(), calib(8, seed=1), resume_dir=str(resume) if resume else None,
                   progress=False)
    out.update({f"prune.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()})
    facts["distribution"] = dist_to_json(result.distribution)
    facts["fitness"] = [it["fitness"] for it in result.iterations]
    return out, facts


def main(folder: Path) -> None:
    acc = Accelerator(cpu=True)  # gloo process group from torchrun's environment
    assert dist.world_size() == 2, f"expected 2 processes, got {dist.world_size()}"
    tensors, facts = calibrate(folder / "resume")
    if acc.is_main_process:
        save_file(tensors, str(folder / "two.safetensors"))
        (folder / "two.json").write_text(json.dumps(facts))
    acc.wait_for_everyone()
    dist.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
