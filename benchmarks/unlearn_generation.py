"""SalUn's generation experiment on a class-conditional DDPM trained here: forget one MNIST class.

Original = `mnist-ddpm` (MNIST at 16×16 px, all ten classes); Retrain = the same recipe without the
class (`mnist-ddpm` with `exclude_classes`, a cached reference build). Methods start from the
original: SalUn (RL objective under the saliency mask), RL without the mask, FT (retain loss
only), ESD (negative guidance, η = 1). Each is judged on its own samples by `mnist16-cnn` (a
classifier of real 16-px MNIST): UA on images generated for the forgotten class, accuracy on
images generated for the retained classes, and the Fréchet distance of the judge's features
(not Inception FID). RTE = wall time of the unlearning run (mask included). Per seed: the
unlearning batches, relabels and samples change; the Retrain model is trained once (seed 0) and
sampled with each seed. Results are appended to the JSON as they finish (a killed run resumes).

    SURGERY_DATA_DIR=../shared/data python benchmarks/unlearn_generation.py [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from _common import RESULTS, stamp

from surgery.data.images import load_images
from surgery.evaluate.generation import generation_metrics, save_grid
from surgery.reference import load_reference
from surgery.unlearn import UnlearnConfig, unlearn
from surgery.unlearn.splits import class_split

COMMON = dict(optimizer="adamw", weight_decay=0.0, batch_size=64, alpha=1.0)
METHODS = {
    # c' drawn per image (c' ≠ c): the first objective measured here, and the 400-step runs
    "SalUn": dict(method="salun", density=0.5, lr=1e-3, relabel="other"),
    "RL": dict(method="rl", lr=1e-3, relabel="other"),
    "FT": dict(method="ft", lr=1e-3),
    "ESD": dict(method="esd", lr=1e-3, negative_guidance=1.0),
    # twice the steps (the official DDPM recipe runs 1,000 iterations at lr 1e-4)
    "SalUn-400": dict(method="salun", density=0.5, lr=1e-3, steps=400, relabel="other"),
    "RL-400": dict(method="rl", lr=1e-3, steps=400, relabel="other"),
    # the official DDPM code's pseudo label, the next class for every forget image (`relabel: auto`, the default)
    "SalUn (next label)": dict(method="salun", density=0.5, lr=1e-3, relabel="next"),
    "RL (next label)": dict(method="rl", lr=1e-3, relabel="next"),
}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--forget-class", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200, help="unlearning steps (one forget + one retain batch each)")
    ap.add_argument("--forget-samples", type=int, default=250)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--sampling-steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=2.0)
    names = ["Original", *METHODS, "Retrain"]
    ap.add_argument("--methods", nargs="+", default=names, choices=names)
    ap.add_argument("--out", default=str(RESULTS / "unlearn_generation.json"))
    ap.add_argument("--merge", nargs="*", default=[], help="result JSONs of parallel runs to merge into --out first")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if out.exists() else {}
    for other in args.merge:
        runs.update(json.loads(Path(other).read_text())["runs"])
    settings = {k: getattr(args, k) for k in ("forget_class", "steps", "forget_samples", "per_class",
                                               "sampling_steps", "guidance")}
    if not args.table_only:
        c = args.forget_class
        original, _, _ = load_reference("mnist-ddpm", progress=False)
        judge, _, _ = load_reference("mnist16-cnn", progress=False)
        size = original.config.sample_size
        train, test = load_images("mnist", "train", None, size), load_images("mnist", "test", None, size)
        f, r = class_split(train, c)
        forget, retain = train.subset(f), train.subset(r)

        def record(key: str, row: dict) -> None:
            runs[key] = row
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps({**stamp(), "settings": settings, "runs": runs}, indent=2))
            print(key, json.dumps({k: v for k, v in row.items() if k != "per_class_acc"}), flush=True)

        def judge_it(model, seed: int):
            return generation_metrics(model, judge, c, test, args.forget_samples, args.per_class, args.sampling_steps,
                                      args.guidance, seed=seed)

        grids = {}
        for seed in args.seeds:
            for name in args.methods:
                key = f"{seed}/{name}"
                if key in runs:
                    continue
                if name == "Retrain":
                    model, _, folder = load_reference("mnist-ddpm", progress=True, exclude_classes=(c,))
                    seconds = json.loads((Path(folder) / "reference.json").read_text())["build_seconds"]
                elif name == "Original":
                    model, seconds = original, 0.0
                else:
                    model, _, _ = load_reference("mnist-ddpm", progress=False)
                    cfg = UnlearnConfig(**COMMON, **{"steps": args.steps, **METHODS[name]}, seed=seed)
                    res = unlearn(model, cfg, forget, retain, progress=False)
                    seconds = res.seconds
                rep = judge_it(model, seed)
                record(key, {**rep.summary(), "RTE": round(seconds, 1)})
                if seed == args.seeds[0]:
                    grids[name] = rep
        if grids:
            rows, names = [], []
            for name, rep in grids.items():
                rows += [rep.forget_images, rep.retain_images[:, 0]]
                names.append(name)
            path = save_grid(rows, out.with_suffix(".png"))
            print(f"grid: {path} (per method: the forgotten class, then one image of each retained class; "
                  f"methods in order {', '.join(names)})")
    if args.merge:
        out.write_text(json.dumps({**stamp(), "settings": settings, "runs": runs}, indent=2))
    text = table(runs, args.seeds)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(runs: dict, seeds: list[int]) -> str:
    lines = ["mean ± std over the seeds run (column `seeds`)", "",
             "| method | seeds | UA (%) ↑ | retained-class accuracy (%) ↑ | judge-feature FID ↓ | RTE (s) | RTE / Retrain |",
             "|---|---|---|---|---|---|---|"]
    for name in ("Retrain", "Original", *METHODS):
        rows = [runs[f"{s}/{name}"] for s in seeds if f"{s}/{name}" in runs]
        if not rows:
            continue
        ret = [runs[f"{s}/Retrain"]["RTE"] for s in seeds if f"{s}/Retrain" in runs]
        ratio = f"{100 * statistics.mean(r['RTE'] for r in rows) / statistics.mean(ret):.1f} %" if ret else "—"
        lines.append(f"| {name} | {len(rows)} | {_ms([r['UA'] for r in rows])} | {_ms([r['retain_acc'] for r in rows])} | "
                     f"{_ms([r['feature_fid'] for r in rows])} | {_ms([r['RTE'] for r in rows])} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
