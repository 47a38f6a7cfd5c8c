"""Dense vs candidates, the way users judge a compressed model: one row per model, every column a
measured value (with its ratio to dense) or the reason there is none; Markdown, JSON and a plot.

Sizes are measured from the folder a user ships (weights, adapter, configs), never from the model in
memory. Speed is measured on the model as it would be served here (`Report.notes` says how: a real
low-bit kernel, or why there is none). Task accuracy comes from lm-eval-harness when asked.
"""
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
from surgery.io import atomic_path, dumps_json

# Direction of each metric: +1 higher is better, -1 lower is better.
DIRECTION = {"ppl": -1, "kl": -1, "acc": +1, "params": -1, "disk_bytes": -1, "bits_per_weight": -1,
             "prefill_tok_s": +1, "decode_tok_s": +1, "task": +1}


@dataclass
class Report:
    """One model's metrics (name → value), the reasons for the missing ones, and notes."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dense: bool = False

    def missing(self, key: str, why: str) -> None:
        self.metrics.pop(key, None)
        self.reasons[key] = why


def evaluate_lm(model: nn.Module, windows: Mapping[str, torch.Tensor], name: str, dense: nn.Module | None = None,
                path: str | os.PathLike | None = None, speed: bool = True, batch_size: int = 8,
                kl_top_k: int | None = None, vocab_size: int | None = None, speed_model: nn.Module | None = None,
                speed_note: str | None = None) -> Report:
    """Perplexity on each window set (`ppl:<set>`), KL to `dense` on the first set, parameters, the
    shipped folder's bytes (`path`), prefill/decode tokens/s (`speed`; on `speed_model` when given,
    e.g. the same weights on a low-bit kernel)."""
    rep = Report(name, dense=dense is None)
    for set_name, w in windows.items():
        rep.metrics[f"ppl:{set_name}"] = perplexity(model, w, batch_size)
    first = next(iter(windows.values()))
    rep.metrics["kl"] = kl_divergence(dense, model, first, batch_size, kl_top_k) if dense is not None else 0.0
    rep.metrics["params"] = float(param_count(model))
    if path is not None:
        rep.metrics["disk_bytes"] = float(size_on_disk(path))
    else:
        rep.missing("disk_bytes", "not exported")
    if speed_note:
        rep.notes.append(speed_note)
    if speed:
        vocab = vocab_size or model.config.vocab_size
        rep.metrics.update(throughput(speed_model or model, vocab))
    else:
        for k in ("prefill_tok_s", "decode_tok_s"):
            rep.missing(k, "not measured")
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


def _ratio(v: float, d: float | None) -> float | None:
    if d is None or d == 0 or not math.isfinite(d) or not math.isfinite(v):
        return None
    return v / d


def _base(reports: list[Report]) -> Report:
    return next((r for r in reports if r.dense), reports[0])


def columns(reports: list[Report]) -> list[str]:
    base = _base(reports)
    seen = list(base.metrics) + list(base.reasons)
    for r in reports:
        seen += [k for k in [*r.metrics, *r.reasons] if k not in seen]
    return list(dict.fromkeys(seen))


def to_markdown(reports: list[Report]) -> str:
    """A table: a row per model, each cell `value (×ratio to dense)` or `— reason`; notes below."""
    base = _base(reports)
    keys = columns(reports)
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in reports:
        cells = []
        for k in keys:
            if k in r.metrics:
                ratio = None if r is base else _ratio(r.metrics[k], base.metrics.get(k))
                cells.append(_fmt(r.metrics[k]) + (f" (×{ratio:.3f})" if ratio is not None else ""))
            else:
                cells.append(f"— {r.reasons.get(k, 'not measured')}")
        tag = " (dense)" if r is base and "dense" not in r.name else ""
        lines.append(f"| {r.name}{tag} | " + " | ".join(cells) + " |")
    notes = [f"- {r.name}: {n}" for r in reports for n in r.notes]
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "")


def to_json(reports: list[Report]) -> dict[str, Any]:
    base = _base(reports)
    return {
        "dense": base.name,
        "models": [{"name": r.name, "metrics": r.metrics, "reasons": r.reasons, "notes": r.notes,
                    "ratio_to_dense": {k: _ratio(v, base.metrics.get(k)) for k, v in r.metrics.items()
                                       if k in base.metrics}} for r in reports],
    }


def plot(reports: list[Report], path: str | os.PathLike) -> None:
    """Grouped bars of each metric as a ratio to dense (1.0 = dense), saved as PNG. A metric that no
    candidate has (or that dense lacks) gets no group; a missing bar is labelled with its reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = _base(reports)
    cands = [r for r in reports if r is not base]
    keys = [k for k in base.metrics if base.metrics[k] not in (0, 0.0) and any(k in r.metrics for r in cands)]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(keys)), 4))
    width = 0.8 / max(len(cands), 1)
    for i, r in enumerate(cands):
        xs = [j + i * width for j in range(len(keys))]
        vals = [_ratio(r.metrics[k], base.metrics[k]) if k in r.metrics else 0.0 for k in keys]
        ax.bar(xs, vals, width, label=r.name)
        for x, k in zip(xs, keys):
            if k not in r.metrics:
                ax.text(x, 0.02, r.reasons.get(k, "n/a"), rotation=90, fontsize=6, ha="center", va="bottom")
    ax.axhline(1.0, color="black", linewidth=0.8)
    labels = [f"{k}\n({'↑' if DIRECTION.get(_metric_base(k), -1) > 0 else '↓'} better)" for k in keys]
    ax.set_xticks([j + width * (len(cands) - 1) / 2 for j in range(len(keys))], labels, fontsize=8)
    ax.set_ylabel(f"ratio to {base.name}")
    ax.legend(fontsize=7)
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
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(dumps_json(to_json(reports)))
    plot(reports, paths["png"])
    return paths
