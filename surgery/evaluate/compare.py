"""Dense-vs-candidates comparison: one metrics row per model, ratios to dense, Markdown/JSON/PNG."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery.evaluate.cost import param_count, size_on_disk, throughput
from surgery.evaluate.lm import kl_divergence, perplexity
from surgery.io import atomic_path, write_json

# Direction of each metric: +1 higher is better, -1 lower is better (used for the plot's labels).
DIRECTION = {"ppl": -1, "kl": -1, "acc": +1, "params": -1, "disk_bytes": -1,
             "prefill_tok_s": +1, "decode_tok_s": +1}


@dataclass
class Report:
    """One model's metrics (name → value); `dense` marks the baseline."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    dense: bool = False


def evaluate_lm(
    model: nn.Module,
    windows: Mapping[str, torch.Tensor],
    name: str,
    dense: nn.Module | None = None,
    path: str | os.PathLike | None = None,
    speed: bool = True,
    batch_size: int = 8,
    kl_top_k: int | None = None,
    vocab_size: int | None = None,
) -> Report:
    """Perplexity on each window set (`ppl:<set>`), KL to `dense` on the first set, params, disk
    size (if `path`), prefill/decode tokens/s (if `speed`)."""
    rep = Report(name, dense=dense is None)
    for set_name, w in windows.items():
        rep.metrics[f"ppl:{set_name}"] = perplexity(model, w, batch_size)
    if dense is not None:
        first = next(iter(windows.values()))
        rep.metrics["kl"] = kl_divergence(dense, model, first, batch_size, kl_top_k)
    else:
        rep.metrics["kl"] = 0.0
    rep.metrics["params"] = float(param_count(model))
    if path is not None:
        rep.metrics["disk_bytes"] = float(size_on_disk(path))
    if speed:
        vocab = vocab_size or model.config.vocab_size
        rep.metrics.update(throughput(model, vocab))
    return rep


def _metric_base(key: str) -> str:
    return key.split(":")[0]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M"
    if abs(v) >= 1e4 and float(v).is_integer():
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2e}"


def _ratio(v: float, d: float) -> float | None:
    if d == 0 or not math.isfinite(d) or not math.isfinite(v):
        return None
    return v / d


def to_markdown(reports: list[Report]) -> str:
    """A table: a row per model, each cell `value (×ratio to dense)`."""
    base = next((r for r in reports if r.dense), reports[0])
    keys = [k for k in base.metrics] + sorted({k for r in reports for k in r.metrics} - set(base.metrics))
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in reports:
        cells = []
        for k in keys:
            if k not in r.metrics:
                cells.append("–")
                continue
            v = r.metrics[k]
            ratio = None if r is base else _ratio(v, base.metrics.get(k, float("nan")))
            cells.append(_fmt(v) + (f" (×{ratio:.3f})" if ratio is not None else ""))
        tag = " (dense)" if r is base and "dense" not in r.name else ""
        lines.append(f"| {r.name}{tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(reports: list[Report]) -> dict[str, Any]:
    base = next((r for r in reports if r.dense), reports[0])
    return {
        "dense": base.name,
        "models": [
            {
                "name": r.name,
                "metrics": r.metrics,
                "ratio_to_dense": {k: _ratio(v, base.metrics[k]) for k, v in r.metrics.items()
                                   if k in base.metrics},
            }
            for r in reports
        ],
    }


def plot(reports: list[Report], path: str | os.PathLike) -> None:
    """Grouped bars of each metric as a ratio to dense (1.0 = dense), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next((r for r in reports if r.dense), reports[0])
    keys = [k for k in base.metrics if base.metrics[k] not in (0, 0.0)]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(keys)), 4))
    width = 0.8 / max(len(reports), 1)
    for i, r in enumerate(reports):
        vals = [(_ratio(r.metrics.get(k, float("nan")), base.metrics[k]) or float("nan")) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=r.name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    labels = [f"{k}\n({'↑' if DIRECTION.get(_metric_base(k), -1) > 0 else '↓'} better)" for k in keys]
    ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(keys))], labels, fontsize=8)
    ax.set_ylabel(f"ratio to {base.name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write(reports: list[Report], out_dir: str | os.PathLike, stem: str = "comparison") -> dict[str, Path]:
    """Write `<stem>.md`, `<stem>.json` and `<stem>.png` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("md", "json", "png")}
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(to_markdown(reports) + "\n")
    write_json(to_json(reports), paths["json"])
    plot(reports, paths["png"])
    return paths
