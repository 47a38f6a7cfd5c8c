"""What any per-layer sparsity distribution can reach on a model, with the present solver: bounds for the search.

One full-resolution supernet (every unit count of every sub-layer: query heads + KV heads, single
neurons; the default solver, dense supernet inputs — so a candidate does not depend on any centre),
or with `--inputs sequential` every distribution built on its own (each sub-layer solved on the
inputs that very model feeds it, the default's sequential calibration: a candidate then depends on
every layer before it, so no supernet can hold them all), then, at each sparsity and at exactly the
uniform model's weight count:
- every exact attention / FFN split, uniform within each type (what `trade_budget` could reach);
- each sub-layer alone at its uniform level, the others dense (how unequal the layers are);
- a greedy climb over the distribution (first improvement, FFN steps 32 → 1 neurons, one attention
  unit) on the perplexity of a window set: `test` is the held-out text the tables report — a bound,
  not a method — and `fitness` the search's own fitness windows (a method, to set beside the search);
  `worst-domain` (two or more `--calib` texts) climbs on the same fitness windows but on the worst
  calibration text's perplexity relative to the uniform model's, so no text pays for another.

    SURGERY_DATA_DIR=../../shared/data python prune_bounds.py [--model stories260K] [--climb test fitness]
        [--calib tinystories:train shakespeare:train --climb fitness worst-domain --out results/X.json]
        [--first-order output]   # the solver with Týr's output term (rows to results/prune_bounds_<model>_output.json)
        [--inputs sequential]    # each distribution solved on its own inputs (rows to ..._sequential.json)
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from _common import MODELS, RESULTS
from prune_shakespeare import SEQLEN, Bench, open_bench

from surgery.data.windows import calib_windows, mixed_calib_windows
from surgery.evaluate import perplexity
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import capture_block_inputs
from surgery.prune import PruneConfig
from surgery.prune.allocation import limits
from surgery.prune.apply import apply_masked
from surgery.prune.supernet import Supernet, build_supernet
from surgery.prune.units import Dist, Layout, dist_to_json, layout, target_removals

FFN_STEPS = (32, 16, 8, 4, 2, 1)


class Bounds:
    """The model masked with any distribution — over one full-resolution supernet (dense inputs), or
    built on its own (sequential inputs) — and its perplexities."""

    def __init__(self, b: Bench, fitness_seed: int = 1, first_order: str = "gradient",
                 inputs: str = "dense") -> None:
        # the solver's defaults (damping, rounds, precision, unit, target) but for its first-order term;
        # dense supernet inputs, or the default's sequential calibration on each model's own inputs
        self.cfg = cfg = PruneConfig(first_order=first_order, accumulation="none" if inputs == "dense" else "centre")
        self.first_order, self.inputs = cfg.first_order, inputs
        self.b, self.model, self.fitness_seed = b, b.fresh(), fitness_seed
        self.adapter = DecoderAdapter(self.model)
        self.lay: Layout = layout(self.adapter, 1, cfg.attn_unit)
        self.most = limits(self.lay)
        self.dense = {s.key: self.adapter.output_proj(s.key.layer, s.key.kind).weight.data for s in self.lay.sublayers}
        self.block_inputs = capture_block_inputs(self.adapter, list(b.calib.split(cfg.batch_size)))
        self.built: tuple[str, Supernet] | None = None
        self.builds, self.build_s = 0, 0.0
        if inputs == "dense":
            self.net = self.build({s.key: list(range(self.most[s.key] + 1)) for s in self.lay.sublayers},
                                  {s.key: 0 for s in self.lay.sublayers})

    def build(self, levels: dict, centres: Dist) -> Supernet:
        """The solver's candidates at `levels`, from the dense weights (accumulating through `centres`)."""
        t = time.time()
        with torch.no_grad():
            for key, w in self.dense.items():
                self.adapter.output_proj(key.layer, key.kind).weight.data = w
        net = build_supernet(self.adapter, self.lay, levels, centres, self.block_inputs, self.cfg.accumulation,
                             self.cfg.damp, self.cfg.solver_rounds, dtype=getattr(torch, self.cfg.hessian_dtype),
                             first_order=self.first_order, target_inputs=self.cfg.target_inputs)
        self.builds, self.build_s = self.builds + 1, self.build_s + time.time() - t
        return net

    def candidates(self, d: Dist) -> Supernet:
        if self.inputs == "dense":
            return self.net
        key = json.dumps(dist_to_json(d))
        if self.built is None or self.built[0] != key:  # a row asks for the same model on several texts
            self.built = key, self.build({k: [r] for k, r in d.items()}, d)
        return self.built[1]

    def ppl(self, d: Dist, windows: torch.Tensor) -> float:
        apply_masked(self.adapter, self.candidates(d), d)
        return perplexity(self.model, windows, batch_size=32)

    def row(self, d: Dist, **extra) -> dict:
        return {"ppl_test": self.ppl(d, self.b.sets["test"]), "ppl_wikitext2": self.ppl(d, self.b.sets["wikitext2"]),
                "removed_params": self.lay.removed_params(d), "distribution": dist_to_json(d),
                "first_order": self.first_order, "inputs": self.inputs, **extra}

    def splits(self, sparsity: float) -> dict[str, dict]:
        """Every attention count per layer whose FFN remainder is exact, spread uniformly."""
        target = target_removals(self.lay, sparsity)
        total = self.lay.removed_params(target)
        attn, mlp = self.lay.of_kind("attn"), self.lay.of_kind("mlp")
        out = {}
        for a in range(min(self.most[s.key] for s in attn) + 1):
            rest = total - a * sum(s.unit_params for s in attn)
            if rest < 0 or rest % mlp[0].unit_params:
                continue
            base, extra = divmod(rest // mlp[0].unit_params, len(mlp))
            if base + (extra > 0) > min(self.most[s.key] for s in mlp):
                continue
            d = {s.key: a for s in attn} | {s.key: base + (j < extra) for j, s in enumerate(mlp)}
            out[f"{sparsity}/split attn {a} per layer"] = self.row(d, attn_per_layer=a,
                                                                  uniform=d == target)
        return out

    def alone(self, sparsity: float) -> dict[str, dict]:
        """Each sub-layer at its uniform level, every other one dense."""
        target = target_removals(self.lay, sparsity)
        out = {}
        for s in self.lay.sublayers:
            d = {k: 0 for k in target} | {s.key: target[s.key]}
            out[f"{sparsity}/alone {s.key}"] = self.row(d)
        return out

    def objective(self, name: str, sparsity: float) -> Callable[[Dist], float]:
        """The climb's objective: perplexity on the test or fitness windows, or the worst calibration
        text's fitness-window perplexity over the uniform model's."""
        if name != "worst-domain":
            return lambda d: self.ppl(d, self.b.sets["test"] if name == "test" else self.b.search)
        parts = fitness_parts(self.b, self.fitness_seed)
        uniform = [self.ppl(target_removals(self.lay, sparsity), w) for w in parts]
        return lambda d: max(self.ppl(d, w) / u for w, u in zip(parts, uniform))

    def climb(self, sparsity: float, objective: Callable[[Dist], float]) -> tuple[Dist, list[dict]]:
        """First-improvement moves of one step between two sub-layers of one type, coarse to fine."""
        d = target_removals(self.lay, sparsity)
        best = objective(d)
        path = [{"move": None, "objective": best}]
        keys = [s.key for s in self.lay.sublayers]
        for ffn_step in FFN_STEPS:
            improved = True
            while improved:
                improved = False
                for a in keys:
                    for b in keys:
                        step = ffn_step if a.kind == "mlp" else 1
                        if a == b or a.kind != b.kind or d[a] + step > self.most[a] or d[b] < step:
                            continue
                        c = dict(d)
                        c[a] += step
                        c[b] -= step
                        f = objective(c)
                        if f < best:
                            d, best, improved = c, f, True
                            path.append({"move": f"{b} -> {a} ({step})", "objective": f})
        return d, path


def fitness_parts(b: Bench, seed: int = 1) -> list[torch.Tensor]:
    """The fitness windows of each calibration text: the parts `mixed_calib_windows` draws with `seed`
    (1: the search benchmark's fitness pool)."""
    n, m = b.search.shape[0], len(b.train)
    parts = [calib_windows(ids, n // m + (i < n % m), SEQLEN, seed + 1000 * i) for i, ids in enumerate(b.train)]
    if sorted(map(tuple, torch.cat(parts).tolist())) != sorted(map(tuple, b.search.tolist())):
        raise SystemExit("the per-text draws are not the fitness windows (mixed_calib_windows changed?)")
    return parts


def table(runs: dict, sparsities: list[float]) -> str:
    dense = runs["dense"]["ppl_test"]
    lines = [f"| sparsity | run | ppl test | ppl − dense ({dense:.2f}) | ppl WikiText-2 "
             "| / uniform (test / WikiText-2) |", "|---|---|---|---|---|---|"]
    for s in sparsities:
        uni = next((r for k, r in runs.items() if k.startswith(f"{s}/split") and r.get("uniform")), None)
        if uni is None:
            continue
        for k, r in runs.items():
            if k.startswith(f"{s}/"):  # the splits, each sub-layer alone, the climbs
                ratio = ("" if "alone" in k else  # not the same weight count
                         f"{r['ppl_test'] / uni['ppl_test']:.3f} / {r['ppl_wikitext2'] / uni['ppl_wikitext2']:.3f}")
                name = k.split("/", 1)[1] + (" (uniform)" if r.get("uniform") else "")
                lines.append(f"| {s} | {name} | {r['ppl_test']:.2f} | {r['ppl_test'] - dense:.2f} | "
                             f"{r['ppl_wikitext2']:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--model", default="stories260K", choices=list(MODELS))
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--max-windows", type=int, default=512, help="cap on evaluation windows per text")
    ap.add_argument("--climb", nargs="*", default=["test", "fitness"], choices=["test", "fitness", "worst-domain"],
                    help="climb objectives (test: a bound; fitness: the search's 64 fitness windows; worst-domain: "
                         "the worst --calib text's perplexity on them, over the uniform model's)")
    ap.add_argument("--calib", nargs="+", help="calibration and fitness texts, drawn evenly (default: the model's)")
    ap.add_argument("--fitness-seed", type=int, default=1,
                    help="the fitness windows' draw (1: the search benchmark's pool; others add ' fitness seed N')")
    ap.add_argument("--first-order", choices=["gradient", "output"],
                    help="the solver saliency's first-order term (default: PruneConfig's); rows of another term "
                         "go to their own JSON (default: results/prune_bounds_<model>_<term>.json)")
    ap.add_argument("--inputs", choices=["dense", "sequential"], default="dense",
                    help="dense: one full-resolution supernet on the dense model's inputs; sequential: every "
                         "distribution solved on its own inputs (the default's calibration; rows to "
                         "results/prune_bounds_<model>[_<term>]_sequential.json)")
    ap.add_argument("--out", help="results JSON (default: results/prune_bounds_<model>.json)")
    ap.add_argument("--table-only", action="store_true", help="print the table from the JSON; run nothing")
    args = ap.parse_args()
    if any(not 0 < s < 1 for s in args.sparsities):
        ap.error(f"--sparsities: each must be in (0, 1), got {args.sparsities}")
    if args.fitness_seed != 1 and "test" in args.climb:
        ap.error("--fitness-seed draws other fitness windows: climb on them (--climb fitness / worst-domain), not test")
    torch.manual_seed(0)
    if "worst-domain" in args.climb and len(args.calib or []) < 2:
        ap.error("--climb worst-domain needs two or more --calib texts")
    default = PruneConfig().first_order
    first_order = args.first_order or default
    suffix = ("" if first_order == default else f"_{first_order}") + ("" if args.inputs == "dense" else "_sequential")
    b = open_bench(ap, Path(args.out or RESULTS / f"prune_bounds_{args.model}{suffix}.json"), args)
    other = {(r.get("first_order", "gradient"), r.get("inputs", "dense")) for k, r in b.runs.items() if k != "dense"}
    if other - {(first_order, args.inputs)}:
        ap.error(f"{b.out} holds rows of (first-order term, inputs) {sorted(other)}, not "
                 f"{(first_order, args.inputs)}: give another --out")
    if "dense" not in b.runs:
        b.record("dense", b.evaluate(b.dense))
    if args.fitness_seed != 1:  # another draw of the fitness pool, as the search benchmark draws it
        b.search = mixed_calib_windows(b.train, b.search.shape[0], SEQLEN, seed=args.fitness_seed)
    tag = "" if args.fitness_seed == 1 else f" fitness seed {args.fitness_seed}"
    bounds = None if args.table_only else Bounds(b, args.fitness_seed, first_order, args.inputs)
    if bounds is not None and args.inputs == "dense":
        print(f"full-resolution supernet: {bounds.build_s:.1f} s", flush=True)
    for s in [] if bounds is None else args.sparsities:
        for key, row in {**bounds.splits(s), **bounds.alone(s)}.items():
            if key not in b.runs:
                b.record(key, row)
        for name in args.climb:
            t = time.time()
            builds, build_s = bounds.builds, bounds.build_s
            d, path = bounds.climb(s, bounds.objective(name, s))
            key = "climb on worst-domain fitness" if name == "worst-domain" else f"climb on {name} windows"
            b.record(f"{s}/{key}{tag}", bounds.row(d, path=path, seconds=time.time() - t,
                                                   models_built=bounds.builds - builds,
                                                   build_seconds=round(bounds.build_s - build_s, 1)))
    text = table(b.runs, args.sparsities)
    b.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
