"""Benchmark helpers: environment stamp, peak memory of a child process, result files."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

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


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond by a thread."""

    def __enter__(self) -> "PeakRSS":
        import threading

        self.start = rss_mib()
        self.peak = self.start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_mib())
                self._stop.wait(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())

    @property
    def extra_mib(self) -> float:
        return self.peak - self.start


def run_child(script: str, *args: str) -> dict[str, Any]:
    """Run `script` in a fresh interpreter (a clean peak-memory reading); it prints one JSON line."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def save(name: str, payload: dict[str, Any], table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**stamp(), **payload}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
