"""SalUn's Table 1 layout on the CIFAR-10 reference ResNet: 10 % random forgetting and class-wise
forgetting, Retrain / FT / RL / GA / ℓ1-sparse / SalUn, several seeds.

The original model is `cifar10-resnet` (ResNet-8, all 50,000 training images), or with `--model
cifar10-memo` the same network memorising a 5,000-image subset (no augmentation, 60 epochs), the
regime of the paper's ResNet-18. LiRA (an offline likelihood-ratio attack, a second MIA column):
every run stores φ (logit-scaled true-label confidence) of a pool = the training images + as many
test images in `--work-dir`; `--train-shadows i j …` trains those of the K = `--lira-shadows`
shadow models (the target's recipe on balanced halves of the pool; parallel processes can share
them), and the table gains the LiRA columns once all K are there. Retrain = the same
recipe from scratch on the retain set (the gold standard of each seed). UA, RA, TA, MIA-Efficacy
(SVC on true-label confidence; shadow = first |test| retain samples vs the test set), RTE
(wall-clock of the run, SalUn's mask pass included), Avg. Gap to that seed's Retrain. Results are
appended to the JSON as they finish (a killed run resumes).

    SURGERY_DATA_DIR=../shared/data python benchmarks/unlearn_cifar10.py [--seeds 0 1 2] [--modes random class]
    … --model cifar10-memo --lira-shadows 4 --train-shadows 0 1   (and 2 3 in a second process)
    … --model cifar10-memo --lira-shadows 4 --table-only
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

from _common import RESULTS, stamp

import numpy as np

from surgery.reference import get_spec, load_reference
from surgery.reference.train_vision import vision_data
from surgery.unlearn.lira import attack_roc, fit_shadows, lira_scores, model_confidences, shadow_confidences
from surgery.unlearn import UnlearnConfig, unlearn
from surgery.unlearn.metrics import GAP_METRICS, avg_gap, classifier_metrics
from surgery.unlearn.splits import class_split, random_split

FORGET_CLASS = 1  # automobile
COMMON = dict(batch_size=128, augment=True, momentum=0.9, weight_decay=5e-4)
METHODS = {  # two passes over the data at most: RTE stays a small share of Retrain's
    "FT": dict(method="ft", epochs=2, lr=0.02),
    "RL": dict(method="rl", epochs=2, lr=0.01),
    "GA": dict(method="ga", epochs=2, lr=2e-4),
    "l1-sparse": dict(method="l1_sparse", epochs=2, lr=0.02, l1=5e-5),
    "SalUn": dict(method="salun", epochs=2, lr=0.01, density=0.5),
}
# the official code's CIFAR-10 relabelling (uniform over all classes, the true one included), on ours
VARIANTS = {"SalUn (any label)": dict(METHODS["SalUn"], relabel="any")}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", default=["random", "class"], choices=["random", "class"])
    ap.add_argument("--model", default="cifar10-resnet", help="cifar10-resnet, or cifar10-memo (memorises its data)")
    ap.add_argument("--epochs", type=int, default=2, help="unlearning epochs of every method but Retrain")
    ap.add_argument("--lira-shadows", type=int, default=0, help="K shadow models for the LiRA columns")
    ap.add_argument("--train-shadows", type=int, nargs="+", help="train these shadow indices (of K) and stop")
    ap.add_argument("--official-salun", metavar="CLONE",
                    help="also run the official SalUn code from this local clone (benchmarks/peers/salun_official.py)")
    ap.add_argument("--relabel-any", action="store_true",
                    help="also SalUn with the official code's random labels (any class, the true one included)")
    ap.add_argument("--work-dir", help="φ of every run and the shadows (default ~/.cache/surgery/bench/<name>)")
    ap.add_argument("--out", help="default: results/unlearn_cifar10.json (results/unlearn_<model>.json)")
    ap.add_argument("--retrain-dir", help="Retrain models trained elsewhere (--retrain-only), loaded here")
    ap.add_argument("--retrain-only", action="store_true", help="only train the Retrain models (into --retrain-dir)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--merge", nargs="*", default=[], help="other result JSONs to merge into --out first")
    ap.add_argument("--table-only", action="store_true", help="print the tables from the JSON; run nothing")
    args = ap.parse_args()
    if args.retrain_only:
        retrain_only(args)
        return
    name = "unlearn_cifar10" if args.model == "cifar10-resnet" else f"unlearn_{args.model}"
    out = Path(args.out or RESULTS / f"{name}.json")
    runs = json.loads(out.read_text())["runs"] if out.exists() else {}
    for other in args.merge:  # runs made in parallel processes (each wrote its own file)
        runs.update(json.loads(Path(other).read_text())["runs"])
    work = Path(args.work_dir or Path.home() / ".cache" / "surgery" / "bench" / name)
    spec = get_spec(args.model)
    train, test_all = vision_data(spec, None)
    lira = Lira(spec, train, test_all, args.lira_shadows, work)
    if args.train_shadows:
        lira.train_shadows(args.train_shadows)
        return
    if args.table_only:
        if args.merge:
            out.write_text(json.dumps({**stamp(), "runs": runs}, indent=2))
        if args.lira_shadows:
            for key, row in runs.items():
                row.update(lira.attack(key, train, test_all))
            out.write_text(json.dumps({**stamp(), "runs": runs}, indent=2))
        text = table(runs, args.modes, args.seeds)
        out.with_suffix(".md").write_text(text + "\n")
        print(text)
        return

    def measure(model, forget, retain, test, key) -> dict:
        lira.store(key, model)
        return classifier_metrics(model, forget, retain, test)

    def record(key: str, row: dict) -> None:
        runs[key] = row
        out.write_text(json.dumps({**stamp(), "runs": runs}, indent=2))
        print(key, json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    for mode in args.modes:
        for seed in args.seeds:
            f, r, test = splits(mode, seed, train, test_all)
            forget, retain = train.subset(f), train.subset(r)
            key = f"{mode}/{seed}/Original"
            if key not in runs:
                model, _, _ = load_reference(args.model, progress=False)
                record(key, {**measure(model, forget, retain, test, key), "RTE": 0.0})
            for name, kw in {**METHODS, **(VARIANTS if args.relabel_any else {})}.items():
                key = f"{mode}/{seed}/{name}"
                if key in runs:
                    continue
                model, _, _ = load_reference(args.model, progress=False)
                res = unlearn(model, UnlearnConfig(**{**COMMON, **kw, "augment": spec.augment, "epochs": args.epochs},
                                                   seed=seed), forget,
                              retain, progress=False)
                record(key, {**measure(model, forget, retain, test, key), "RTE": res.seconds})
            key = f"{mode}/{seed}/SalUn (official)"
            if args.official_salun and key not in runs:
                from peers.salun_official import official_salun

                kw = METHODS["SalUn"]
                model, _, _ = load_reference(args.model, progress=False)
                res = official_salun(model, forget, retain, args.official_salun, args.epochs, kw["lr"], kw["density"],
                                     seed, COMMON["batch_size"], COMMON["momentum"], COMMON["weight_decay"])
                record(key, {**measure(model, forget, retain, test, key), "RTE": res["seconds"],
                             "commit": res["commit"], "mask_density": res["mask_density"]})
            key = f"{mode}/{seed}/Retrain"
            saved = Path(args.retrain_dir or "-") / f"{mode}_{seed}.safetensors"
            if key not in runs and saved.exists():
                from safetensors.torch import load_file

                model, _, _ = load_reference(args.model, progress=False)
                model.load_state_dict(load_file(str(saved)))
                meta = json.loads(saved.with_suffix(".json").read_text())
                record(key, {**measure(model, forget, retain, test, key), "RTE": meta["seconds"],
                             "trained_on": meta["device"]})
            if key not in runs:
                model, _, _ = load_reference(args.model, progress=False)
                res = unlearn(model, UnlearnConfig(method="retrain", epochs=spec.epochs, lr=spec.lr,
                                                   batch_size=spec.batch_size, weight_decay=spec.weight_decay,
                                                   augment=spec.augment, seed=seed), forget, retain,
                              progress=False)
                record(key, {**measure(model, forget, retain, test, key), "RTE": res.seconds})

    print(table(runs, args.modes, args.seeds))


class Lira:
    """Offline LiRA against every run: φ of a pool (the training images + as many seeded test
    images) under each model judged is kept in `work`/phi; the K shadows (the target's recipe on
    balanced halves of the pool) in `work`/shadow_k.npz. Forget examples vs pooled test examples
    (of the forgotten class in class-wise mode)."""

    def __init__(self, spec, train, test_all, shadows: int, work: Path) -> None:
        from surgery.data.images import ImageSet

        pick = torch.randperm(len(test_all), generator=torch.Generator().manual_seed(1))[: len(train)]
        self.pool = ImageSet(torch.cat([train.x, test_all.x[pick]]), torch.cat([train.y, test_all.y[pick]]),
                             train.classes, train.scale, "lira pool")
        self.spec, self.shadows, self.work, self.n_train = spec, shadows, work, len(train)
        self.arch = {**spec.arch, "num_classes": len(train.classes)}

    def _phi_path(self, key: str) -> Path:
        return self.work / "phi" / (key.replace("/", "_") + ".npy")

    def store(self, key: str, model) -> None:
        path = self._phi_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, model_confidences(model, self.pool))

    def train_shadows(self, which: list[int]) -> None:
        s = self.spec
        self.work.mkdir(parents=True, exist_ok=True)
        for k in which:
            path = self.work / f"shadow_{k}_of_{self.shadows}.npz"
            if path.exists():
                continue
            phi, inside = shadow_confidences(self.arch, self.pool, self.shadows, s.epochs, s.batch_size, s.lr,
                                             s.weight_decay, s.augment, seed=0, progress=True, which=[k])
            np.savez(path, phi=phi[0], inside=inside[0])
            print("shadow", k, "done", flush=True)

    @functools.cached_property
    def stats(self):
        """The shadows' Gaussian fits (read and fitted once for every run judged)."""
        paths = [self.work / f"shadow_{k}_of_{self.shadows}.npz" for k in range(self.shadows)]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise SystemExit(f"LiRA needs {', '.join(missing)} (--train-shadows)")
        shadows = [np.load(p) for p in paths]
        return fit_shadows(np.stack([d["phi"] for d in shadows]), np.stack([d["inside"] for d in shadows]))

    def attack(self, key: str, train, test_all) -> dict:
        if not self._phi_path(key).exists():
            raise SystemExit(f"LiRA needs {self._phi_path(key)} (run the benchmark for {key} first)")
        scores = lira_scores(np.load(self._phi_path(key)), self.stats)
        mode, seed = key.split("/")[:2]
        f = splits(mode, int(seed), train, test_all)[0]
        test_pos = np.arange(self.n_train, len(self.pool))
        if mode == "class":
            test_pos = test_pos[self.pool.y[test_pos].numpy() == FORGET_CLASS]
        roc = attack_roc(scores[f.numpy()], scores[test_pos])
        return {"LiRA_auc": 100 * roc["auc"], "LiRA_tpr1": 100 * roc["tpr@0.01"]}


def splits(mode: str, seed: int, train, test_all):
    if mode == "class":
        f, r = class_split(train, FORGET_CLASS)
        return f, r, test_all.subset(torch.nonzero(test_all.y != FORGET_CLASS).flatten())
    f, r = random_split(train, 0.1, seed)
    return f, r, test_all


def retrain_only(args: argparse.Namespace) -> None:
    """Train each (mode, seed) Retrain model on `--device` and save it with its wall time."""
    from safetensors.torch import save_file

    folder = Path(args.retrain_dir)
    folder.mkdir(parents=True, exist_ok=True)
    spec = get_spec(args.model)
    train, test_all = vision_data(spec, None)
    for mode in args.modes:
        for seed in args.seeds:
            f, r, _ = splits(mode, seed, train, test_all)
            model, _, _ = load_reference(args.model, progress=False)
            model.to(args.device)
            res = unlearn(model, UnlearnConfig(method="retrain", epochs=spec.epochs, lr=spec.lr,
                                               batch_size=spec.batch_size, weight_decay=spec.weight_decay,
                                               augment=spec.augment, seed=seed), train.subset(f), train.subset(r),
                          progress=False)
            save_file({k: v.cpu().contiguous() for k, v in model.state_dict().items()},
                      str(folder / f"{mode}_{seed}.safetensors"))
            device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
            (folder / f"{mode}_{seed}.json").write_text(json.dumps({"seconds": res.seconds, "device": device}))
            print(mode, seed, round(res.seconds, 1), flush=True)


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(runs: dict, modes: list[str], seeds: list[int]) -> str:
    text = []
    lira = bool(runs) and all("LiRA_auc" in r for r in runs.values())
    for mode in modes:
        title = "10 % random forgetting" if mode == "random" else f"class-wise forgetting (class {FORGET_CLASS})"
        lines = [f"**{title}**, {len(seeds)} seeds, mean ± std (gap to Retrain in parentheses)", "",
                 "| method | UA | MIA-Eff | RA | TA | Avg. Gap | Gap w/o MIA | RTE (s) | RTE / Retrain |" +
                 (" LiRA AUC | LiRA TPR@1%FPR |" if lira else ""),
                 "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if lira else "")]
        for name in ("Retrain", "Original", *METHODS, *VARIANTS, "SalUn (official)"):
            pairs = [(runs[f"{mode}/{s}/{name}"], runs[f"{mode}/{s}/Retrain"]) for s in seeds
                     if f"{mode}/{s}/{name}" in runs and f"{mode}/{s}/Retrain" in runs]
            if not pairs:
                continue
            rows, ret = [p[0] for p in pairs], [p[1] for p in pairs]
            cells = []
            for m in GAP_METRICS:
                v = [r[m] for r in rows]
                gap = statistics.mean(abs(r[m] - q[m]) for r, q in zip(rows, ret))
                cells.append(_ms(v) + ("" if name == "Retrain" else f" ({gap:.2f})"))
            gaps = [avg_gap(r, q) for r, q in zip(rows, ret)]
            no_mia = [statistics.mean(abs(r[m] - q[m]) for m in GAP_METRICS if m != "MIA") for r, q in zip(rows, ret)]
            rte = [r["RTE"] for r in rows]
            ratio = statistics.mean(r["RTE"] / q["RTE"] for r, q in zip(rows, ret))
            extra = "".join(f" {_ms([r[k] for r in rows])} |" for k in ("LiRA_auc", "LiRA_tpr1")) if lira else ""
            lines.append(f"| {name} | {' | '.join(cells)} | {_ms(gaps)} | {_ms(no_mia)} | {_ms(rte)} | {100 * ratio:.1f} % |"
                         + extra)
        text.append("\n".join(lines))
    text.append("Gap w/o MIA: mean |method − Retrain| over UA, RA, TA only (ours, not the paper's; see "
                "benchmarks/mia_stability.py for why)." + (" LiRA: offline likelihood-ratio attack with shadow models "
                "(forget examples vs held-out test examples; AUC 50 = indistinguishable), in %." if lira else ""))
    return "\n\n".join(text)


if __name__ == "__main__":
    main()
