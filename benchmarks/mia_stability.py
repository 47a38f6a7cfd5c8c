"""How stable is SalUn's MIA-Efficacy on the CIFAR-10 reference ResNet?

The attack is an SVC on one feature (true-label confidence). After class-wise unlearning nearly
every forget sample sits at confidence ≈ 0, so MIA-Efficacy is ~0 or ~100 depending only on the
sign of the SVC's decision function near 0. This script fits the official SVC on bootstrap
resamples of the shadow set of the original model — or of a model unlearned with one of the
benchmark's methods and seeds — and prints that decision value and the predicted label from low
to high confidences.

    SURGERY_DATA_DIR=../shared/data python benchmarks/mia_stability.py [--resamples 8]
    SURGERY_DATA_DIR=../shared/data python benchmarks/mia_stability.py --unlearned SalUn --seeds 1 2 --modes class
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.svm import SVC

from _common import RESULTS, stamp
from unlearn_cifar10 import COMMON, METHODS, splits

from surgery.data.images import cifar10
from surgery.reference import load_reference
from surgery.unlearn import UnlearnConfig, unlearn
from surgery.unlearn.metrics import mia_efficacy_from_confidence, true_label_confidence

PROBES = (0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--resamples", type=int, default=8)
    ap.add_argument("--unlearned", choices=list(METHODS), help="probe models unlearned with this method")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--modes", nargs="+", default=["class", "random"], choices=["class", "random"])
    ap.add_argument("--out", default=str(RESULTS / "mia_stability.json"))
    args = ap.parse_args()
    train, test_all = cifar10("train"), cifar10("test")
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else {}
    for mode, seed in [(m, s) for m in args.modes for s in args.seeds]:
        f, r, test = splits(mode, seed, train, test_all)
        model, _, _ = load_reference("cifar10-resnet", progress=False)
        name = f"{mode}/{seed}/{args.unlearned or 'Original'}"
        if args.unlearned:
            unlearn(model, UnlearnConfig(**COMMON, **METHODS[args.unlearned], seed=seed), train.subset(f),
                    train.subset(r), progress=False)
        shadow = train.subset(torch.as_tensor(r)[: len(test)])
        p_in, p_out = true_label_confidence(model, shadow), true_label_confidence(model, test)
        rng = np.random.default_rng(0)
        probe = np.array(PROBES).reshape(-1, 1)
        fits = []
        for _ in range(args.resamples):
            a = rng.choice(len(p_in), len(p_in))  # bootstrap: the same sizes, drawn with replacement
            b = rng.choice(len(p_out), len(p_out))
            x = np.concatenate([p_in[a], p_out[b]]).reshape(-1, 1)
            y = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
            clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
            fits.append({"decision": clf.decision_function(probe).round(4).tolist(),
                         "member": clf.predict(probe).astype(int).tolist()})
        efficacy = mia_efficacy_from_confidence(p_in, p_out, true_label_confidence(model, train.subset(f)))
        rows[name] = {"mia_efficacy": efficacy,
                      "members_mean_conf": float(p_in.mean()), "nonmembers_mean_conf": float(p_out.mean()),
                      "members_below_0.1": float((p_in < 0.1).mean()), "nonmembers_below_0.1": float((p_out < 0.1).mean()),
                      "fits": fits}
    out.write_text(json.dumps({**stamp(), "probes": PROBES, "rows": rows}, indent=2))
    lines = ["| shadow set | resample | " + " | ".join(f"p={p}" for p in PROBES) + " |",
             "|---|---|" + "---|" * len(PROBES)]
    for mode, row in rows.items():
        for i, fit in enumerate(row["fits"]):
            cells = [f"{d:+.3f} ({'in' if m else 'out'})" for d, m in zip(fit["decision"], fit["member"])]
            lines.append(f"| {mode} | {i} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\n(SVC decision value at each true-label confidence; in = predicted member)\n"
    text += "\n".join(f"{m}: MIA-Efficacy {r['mia_efficacy']:.2f}; mean confidence members {r['members_mean_conf']:.3f} / non-members "
                      f"{r['nonmembers_mean_conf']:.3f}; below 0.1: {100 * r['members_below_0.1']:.1f} % / "
                      f"{100 * r['nonmembers_below_0.1']:.1f} %" for m, r in rows.items())
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
