"""Benchmark helpers: environment stamp, peak memory of a child process, result files."""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "scripts"))
from memory import Peak  # noqa: E402  (the one peak sampler, shared with tests/test_memory.py)

RESULTS = Path(__file__).resolve().parent / "results"
# benchmark language models: model source, calibration text, evaluation texts, quantization group rule
MODELS = {
    "shakespeare-lm": ("shakespeare-lm", "shakespeare:train", {"test": "shakespeare:test", "wikitext2": "wikitext2"},
                       "error"),
    "stories260K": ("{data}/models/stories260K", "tinystories:train",
                    {"test": "tinystories:test", "wikitext2": "wikitext2"}, "channel"),
}


def model_path(name: str) -> Path:
    """The local folder of a benchmark model (reference models are built on first use)."""
    from surgery.data.text import data_dir
    from surgery.reference import resolve_model

    return resolve_model(MODELS[name][0].format(data=data_dir()))


def stamp() -> dict[str, Any]:
    import transformers

    return {
        "date": _dt.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Current resident memory, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def PeakRSS() -> "Peak":
    """Peak resident memory above the level at entry, sampled every millisecond by a thread."""
    return Peak(read=rss_mib, interval=0.001)


def run_child(script: str, *args: str) -> dict[str, Any]:
    """Run `script` in a fresh interpreter (a clean peak-memory reading); it prints one JSON line."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_runs(out: Path, runs: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    """Merge `runs` into the results file `out` under an exclusive lock and replace it atomically, so that
    processes adding runs to one file side by side never drop each other's; returns the merged runs."""
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {**(json.loads(out.read_text())["runs"] if out.exists() else {}), **runs}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({**header, "runs": merged}, indent=2, default=str))
        os.replace(tmp, out)
    return merged


def save(name: str, payload: dict[str, Any], table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**stamp(), **payload}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
