"""Markdown tables of `prune_shakespeare.py`'s results JSON (its `runs` dict): methods side by side,
search seeds, Týr's code interpolated to our weight count, accumulation, per-iteration fitness."""
from __future__ import annotations

import statistics


def _over_seeds(runs: dict, base: str) -> list[dict]:
    """The run `base` and its other search seeds (`base seed N`)."""
    return [runs[k] for k in runs if k == base or k.startswith(base + " seed ")]


def _seed_table(runs: dict, sparsities: list[float], variants: list[str]) -> str:
    """Mean ± sd over search seeds of every run that has more than one seed."""
    rows = []
    for s in sorted(sparsities):
        for name in ("search", "search accumulation=none", *(f"search {k}" for k in variants)):
            base = f"{s}/{name}"
            seeded = _over_seeds(runs, base)
            if len(seeded) < 2:
                continue
            cells = []
            for field in ("ppl_test", "ppl_wikitext2"):
                v = [r[field] for r in seeded]
                each = ", ".join(f"{x:.1f}" for x in v)
                cells.append(f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} ({each})")
            rows.append(f"| {s} | {name} | {len(seeded)} | {cells[0]} | {cells[1]} |")
    if not rows:
        return ""
    return ("\n\nOver search seeds (mean ± sd, then each seed):\n\n| sparsity | method | seeds | ppl test | "
            "ppl WikiText-2 |\n|---|---|---|---|---|\n" + "\n".join(rows))


def _tyr_runs(runs: dict) -> dict[int, list[dict]]:
    """Týr's runs by search seed (its runs at the benchmark's sparsities are seed 0)."""
    out: dict[int, list[dict]] = {}
    for k, r in runs.items():
        if "ppl_test" not in r or not (k.endswith("/tyr official") or k.startswith("matched/tyr official at ")):
            continue
        seed = int(k.rsplit(" seed ", 1)[1]) if " seed " in k else 0
        out.setdefault(seed, []).append(r)
    return out


# widest bracket (share of the target's weights) interpolated: Týr's runs a step of 1–2 % sparsity apart
MAX_BRACKET = 0.1


def _tyr_interpolated(runs: dict, sparsities: list[float]) -> str:
    """Týr's perplexities linearly interpolated (in block weights) to our exact weight count, per seed:
    its whole-head and 32-neuron steps never land on our count."""
    rows = []
    for s in sorted(sparsities):
        ours = runs.get(f"{s}/uniform+solver")
        if not ours:
            continue
        target = ours["block_params"]
        per_seed = {}
        for seed, tyr in sorted(_tyr_runs(runs).items()):
            above = [r for r in tyr if r["block_params"] >= target]
            below = [r for r in tyr if r["block_params"] <= target]
            if not above or not below:
                continue
            hi = min(above, key=lambda r: r["block_params"])
            lo = max(below, key=lambda r: r["block_params"])
            if hi["block_params"] - lo["block_params"] > MAX_BRACKET * target:
                continue  # runs this far apart do not interpolate linearly
            w = 0.0 if hi is lo else (hi["block_params"] - target) / (hi["block_params"] - lo["block_params"])
            per_seed[seed] = [(1 - w) * hi[f] + w * lo[f] for f in ("ppl_test", "ppl_wikitext2")]
        if not per_seed:
            continue
        cells = []
        for i in range(2):
            v = [x[i] for x in per_seed.values()]
            sd = f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""
            cells.append(f"{statistics.mean(v):.2f}{sd} ({', '.join(f'{x:.1f}' for x in v)})")
        seeds = ", ".join(map(str, per_seed))
        rows.append(f"| {s} | {target:,} | {len(per_seed)} ({seeds}) | {cells[0]} | {cells[1]} |")
    if not rows:
        return ""
    return ("\n\nTýr's code interpolated to our weight count (between the two of its runs that bracket it, "
            "per search seed):\n\n| sparsity | block weights | seeds | ppl test | ppl WikiText-2 |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows))


DEFAULTS = (("present defaults (query heads, sequential inputs, pruned target)",
             "head units + sequential inputs, pruned target"),
            ("the defaults until 2026-12-07 (query heads, dense inputs)", "head units + dense inputs"))


def _default_ratio(runs: dict, s: float) -> str:
    """The present (and the previous) defaults' search, mean over its seeds, against their own uniform model."""
    out = ""
    for label, name in DEFAULTS:
        u = runs.get(f"{s}/uniform+solver {name}")
        seeded = _over_seeds(runs, f"{s}/search {name}")
        if not u or not seeded:
            continue
        test, wiki = (statistics.mean(r[f] for r in seeded) for f in ("ppl_test", "ppl_wikitext2"))
        out += (f"{s}: {label}, search over {len(seeded)} seed(s) / their uniform model: in domain "
                f"{test / u['ppl_test']:.3f}, WikiText-2 {wiki / u['ppl_wikitext2']:.3f}\n")
    return out


def report(runs: dict, sparsities: list[float], variants: list[str], ablations: list[str]) -> str:
    """Every table; `variants` / `ablations` name the search runs ("search <name>") in display order."""
    d = runs["dense"]
    lines = ["| sparsity | method | ppl test (in domain) | ppl WikiText-2 | KL to dense | block weights | wall s |",
             "|---|---|---|---|---|---|---|",
             f"| 0 | dense | {d['ppl_test']:.2f} | {d['ppl_wikitext2']:.1f} | 0 | {d['block_params']:,} | – |"]
    for s in sorted(sparsities):
        damped = sorted((k for k in runs if k.startswith(f"{s}/uniform+solver head units + dense inputs, damp ")),
                        key=lambda k: float(k.rsplit(" ", 1)[1]))
        for m in ("uniform+solver", "uniform+solver head units", "uniform+solver head units + dense inputs",
                  *(k.split("/", 1)[1] for k in damped), "uniform+solver head units + dense inputs, output saliency",
                  *(k.split("/", 1)[1] for k in runs if k.startswith(f"{s}/uniform+solver head units + ")
                    and (k.endswith(" target") or k.endswith("target, output saliency"))),
                  "wanda-sp", "flap", "torch-pruning units",
                  "torch-pruning official", "search fixed windows", "search",
                  *(f"search {k}" for k in variants),
                  "search accumulation=none",
                  *(f"search {k}" for k in ablations), "tyr official"):
            r = runs.get(f"{s}/{m}")
            if r and "failed" in r:
                lines.append(f"| {s} | {m} | {r['failed']} | | | | |")
            elif r:
                lines.append(f"| {s} | {m} | {r['ppl_test']:.2f} | {r['ppl_wikitext2']:.1f} | {r['kl_test']:.4f} | "
                             f"{r['block_params']:,} | {r.get('seconds', 0):.0f} |")
        u, srch = runs.get(f"{s}/uniform+solver"), runs.get(f"{s}/search")
        if u and srch:
            lines.append(f"\n{s}: search / uniform perplexity: in domain {srch['ppl_test'] / u['ppl_test']:.3f}, "
                         f"WikiText-2 {srch['ppl_wikitext2'] / u['ppl_wikitext2']:.3f} (goal ≤ 0.8 in domain, "
                         "≤ 1 out of domain)\n")
        ratio = _default_ratio(runs, s)
        if ratio:
            lines.append(ratio)
    text = "\n".join(lines)
    seeded = _seed_table(runs, sparsities, variants)
    if seeded:
        text += seeded
    matched = sorted(k for k in runs if k.startswith("matched/"))
    if matched:
        text += ("\n\nTýr's code at raised sparsities (its query-head units keep more weights at a given "
                 "sparsity):\n\n| run | ppl test | ppl WikiText-2 | KL to dense | block weights | wall s |\n"
                 "|---|---|---|---|---|---|\n")
        text += "\n".join(f"| {k[len('matched/'):]} | {r['ppl_test']:.2f} | {r['ppl_wikitext2']:.1f} | "
                           f"{r['kl_test']:.4f} | {r['block_params']:,} | {r.get('seconds', 0):.0f} |"
                           for k, r in ((k, runs[k]) for k in matched))
    text += _tyr_interpolated(runs, sparsities)
    acc = {"none (dense inputs)": runs.get("ablation/accumulation=none"),
           "centre candidate": runs.get("ablation/accumulation=centre"),
           "expectation": runs.get("0.5/uniform+solver")}
    if all(acc.values()):
        text += ("\n\nAccumulation (50 %, uniform levels, no search):\n\n| next-block inputs | ppl test | "
                 "ppl WikiText-2 | KL |\n|---|---|---|---|\n" + "\n".join(
                     f"| {k} | {r['ppl_test']:.2f} | {r['ppl_wikitext2']:.1f} | {r['kl_test']:.4f} |"
                     for k, r in acc.items()))
    full = runs.get("0.5/search")
    rows = [(f"{s} {m}", runs[f"{s}/{m}"]) for s in sorted(sparsities)
            for m in ("search", *(f"search {k}" for k in variants), "search fixed windows",
                      "search accumulation=none",
                      *(f"search {k}" for k in ablations)) if f"{s}/{m}" in runs]
    rows += [(f"0.5 {k}", runs[f"ablation/{v}"]) for k, v in (("uniform start", "search-from-uniform"),
                                                                  ("saliency start + pre-screen 50 %",
                                                                   "search-saliency-prescreen"))
             if f"ablation/{v}" in runs]
    if rows:
        text += ("\n\nSearch iterations: held-out perplexity in and out of domain and fitness (top-k KL "
                 "on the search windows) after each iteration, cumulative wall time; the best iteration by fitness "
                 "is the one kept:\n\n| variant | iteration | ppl test | ppl WikiText-2 | fitness | s |\n"
                 "|---|---|---|---|---|---|\n")
        for name, r in rows:
            total = 0.0
            for it in r["per_iteration"]:
                total += it["seconds"]
                wiki = f"{it['ppl_wikitext2']:.1f}" if "ppl_wikitext2" in it else "–"
                text += (f"| {name} | {it['iteration']} | {it['ppl_test']:.2f} | {wiki} | {it['fitness']:.4f} | "
                         f"{total:.0f} |\n")
    if full and "speed" in full:
        sp = full["speed"]
        text += (f"\nSliced 50 % model vs dense, same process: prefill {sp['ratio']['prefill_tok_s']:.2f}×, "
                 f"decode {sp['ratio']['decode_tok_s']:.2f}× (goal ≥ 1.5×); dense "
                 f"{sp['dense']['prefill_tok_s']:.0f} / {sp['dense']['decode_tok_s']:.0f} tok/s, sliced "
                 f"{sp['sliced']['prefill_tok_s']:.0f} / {sp['sliced']['decode_tok_s']:.0f} tok/s.\n")
    return text
