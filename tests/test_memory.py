"""Models larger than the device: with a checkpoint folder, finished blocks and block inputs are
memory-mapped back from their committed files, so quantizing a model loaded lazily from safetensors
holds a few blocks at once in anonymous memory, whatever its depth. Measured in fresh processes
(RssAnon: memory beyond the memory-mapped weights), with a fixed malloc threshold so freed blocks
return to the system."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "scripts" / "memory.py"


def measure(*args: str | Path) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("mem") / "llama"
    subprocess.run([sys.executable, str(SCRIPT), "build", str(path), "512", "8", "1408"], check=True,
                   capture_output=True)
    return path


# measured (2026-11-30): GPTQ 2.9 blocks (4.4 before each Hessian was factorised in its own storage), ApiQ 3.7
# (7.0 before the quantizer's intermediates were recomputed in the backward pass)
@pytest.mark.parametrize("method,max_blocks", [("gptq", 3.5), pytest.param("apiq", 4.5, marks=pytest.mark.slow)])
def test_released_blocks_bound_the_memory_of_blockwise_quantization(folder, method, max_blocks):
    release, keep = measure(folder, "release", method), measure(folder, "keep", method)
    block = release["block_mib"]
    assert release["peak_extra_mib"] <= max_blocks * block, release
    assert keep["peak_extra_mib"] >= release["peak_extra_mib"] + 0.5 * release["weights_mib"], (keep, release)



@pytest.mark.slow
def test_supernet_build_memory_does_not_grow_with_depth(folder, tmp_path):
    """The pruning supernet build (5 levels per sub-layer) commits each block's candidates and block
    inputs to its checkpoint and maps them back: twice the blocks, the same peak (within one block),
    while without a checkpoint every candidate stays in memory.
    Measured (2026-12-01, 512 wide, 10.5 MiB blocks): 80.9 MiB with 8 blocks, 81.4 with 16; 178 kept."""
    deep = tmp_path / "deep"
    subprocess.run([sys.executable, str(SCRIPT), "build", str(deep), "512", "16", "1408"], check=True,
                   capture_output=True)
    release, deeper = measure(folder, "release", "supernet"), measure(deep, "release", "supernet")
    keep = measure(folder, "keep", "supernet")
    block = release["block_mib"]
    assert deeper["blocks"] == 2 * release["blocks"]
    assert deeper["build_peak_extra_mib"] <= release["build_peak_extra_mib"] + block, (deeper, release)
    assert keep["build_peak_extra_mib"] >= release["build_peak_extra_mib"] + 4 * block, (keep, release)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pruning_solver_holds_wt_and_the_kept_columns_only(dtype):
    """With dense inputs the solver's gradient is D·W_denseᵀ, formed by rows from the layer's own weight
    when used, and a snapshot holds only its kept columns: beyond the Hessian it consumes, its peak is
    Wᵀ and the five compact snapshots, plus chunk-sized temporaries (16 MiB allowed) — not an in×out
    float64 gradient nor five full-shape weights (26 MiB more here). In float32 the Hessian and Wᵀ
    are half the size.
    Measured (2026-12-01, 2048 × 1024): float64 56.3 MiB (Wᵀ 16 + snapshots 30), float32 43.4 (8 + 30)."""
    r = measure("solver", 2048, 1024, dtype)
    assert r["peak_extra_mib"] <= r["wt_mib"] + r["compact_mib"] + 16, r
    assert r["hessian_mib"] == (32 if dtype == "float64" else 16)
