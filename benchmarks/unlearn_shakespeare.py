"""LLM unlearning on the Shakespeare reference LM: forget one play, keep the others.

Gold standard: the reference LM retrained from scratch without that play (same recipe and
tokenizer). Methods: GradDiff and NPO (β = 0.1, frozen reference), each plain and restricted to
the SalUn mask (top 50 % of |Σ∇(−NLL)| on the forget play). Metrics: forget-play perplexity,
retain perplexity (training plays, the forget play excluded), held-out perplexity (test plays),
and the Min-K% (k = 20 %) membership AUC of the forget play against an unseen play (a validation
play), each beside the retrained model.

    SURGERY_DATA_DIR=../shared/data python benchmarks/unlearn_shakespeare.py [--forget romeo_and_juliet]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from _common import RESULTS, stamp

from surgery.data import text as textdata
from surgery.data.windows import calib_windows, eval_windows, tokenize
from surgery.evaluate import perplexity
from surgery.reference import load_reference
from surgery.unlearn import UnlearnConfig, unlearn
from surgery.unlearn.metrics import min_k_auc

SEQLEN = 256
UNSEEN = "julius_caesar"  # a validation play: never trained on by either model
COMMON = dict(epochs=2, batch_size=8, optimizer="adamw", weight_decay=0.0, alpha=1.0)
LRS = (2e-5, 5e-5, 2e-4)  # every method at every rate; the table picks, per method, the rate whose
# forget-play perplexity lands closest to the retrained model's (log scale), as MUSE-style
# comparisons at matched forget quality do
METHODS = {
    "GradDiff": dict(method="graddiff"),
    "GradDiff + SalUn mask": dict(method="graddiff", use_mask=True, density=0.5),
    "NPO": dict(method="npo", beta=0.1),
    "NPO + SalUn mask": dict(method="npo", beta=0.1, use_mask=True, density=0.5),
}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--forget", default="romeo_and_juliet")
    ap.add_argument("--out", default=str(RESULTS / "unlearn_shakespeare.json"))
    args = ap.parse_args()
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if out.exists() else {}
    _, tok, _ = load_reference("shakespeare-lm", progress=False)
    sp = textdata.shakespeare()
    forget = eval_windows(tokenize(tok, sp["train"][args.forget]), SEQLEN)
    retain_ids = tokenize(tok, textdata.join({k: v for k, v in sp["train"].items() if k != args.forget}))
    retain_train = calib_windows(retain_ids, 4 * forget.shape[0], SEQLEN, seed=0)
    retain_eval = calib_windows(retain_ids, 64, SEQLEN, seed=1)
    test = eval_windows(tokenize(tok, textdata.join(sp["test"])), SEQLEN)
    unseen = eval_windows(tokenize(tok, sp["valid"][UNSEEN]), SEQLEN)

    def measure(model: torch.nn.Module) -> dict:
        return {"ppl_forget": perplexity(model, forget, 16), "ppl_retain": perplexity(model, retain_eval, 16),
                "ppl_test": perplexity(model, test, 16), "mink_auc": min_k_auc(model, forget, unseen)}

    def record(key: str, row: dict) -> None:
        runs[key] = row
        out.write_text(json.dumps({**stamp(), "forget": args.forget, "unseen": UNSEEN,
                                   "forget_windows": forget.shape[0], "runs": runs}, indent=2))
        print(key, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    if "Original" not in runs:
        record("Original", measure(load_reference("shakespeare-lm", progress=False)[0]))
    if "Retrain" not in runs:
        model, retok, path = load_reference("shakespeare-lm", exclude_works=(args.forget,), progress=False)
        assert retok.get_vocab() == tok.get_vocab(), "the retrained model must share the tokenizer"
        info = json.loads((path / "reference.json").read_text())
        record("Retrain", {**measure(model), "seconds": info["build_seconds"]})
    for lr in LRS:
        for name, kw in METHODS.items():
            key = f"{name} @ lr={lr:g}"
            if key in runs:
                continue
            model, _, _ = load_reference("shakespeare-lm", progress=False)
            res = unlearn(model, UnlearnConfig(**COMMON, **kw, lr=lr), forget, retain_train, progress=False)
            record(key, {**measure(model), "seconds": res.seconds, "trainable": res.trainable, "lr": lr})
    text = table(runs)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


def selected(runs: dict) -> dict:
    """Per method, the learning rate whose forget-play perplexity is closest to Retrain's."""
    target = math.log(runs["Retrain"]["ppl_forget"])
    best: dict = {}
    for key, r in runs.items():
        if " @ lr=" not in key:
            continue
        name = key.split(" @ ")[0]
        if name not in best or abs(math.log(r["ppl_forget"]) - target) < \
                abs(math.log(runs[best[name]]["ppl_forget"]) - target):
            best[name] = key
    return best


def table(runs: dict) -> str:
    pick = selected(runs)
    order = ["Original", "Retrain", *[pick[n] for n in METHODS if n in pick]]
    text = _rows(runs, order) + "\n\n(difference to the retrained model in parentheses; per method, the " \
        "learning rate whose forget-play perplexity is closest to Retrain's)\n\nAll learning rates:\n\n"
    return text + _rows(runs, ["Retrain", *[k for k in runs if " @ lr=" in k]])


def _rows(runs: dict, keys: list[str]) -> str:
    ret = runs["Retrain"]
    lines = ["| model | ppl forget play | ppl retain | ppl test plays | Min-K% AUC (forget vs unseen) | seconds |",
             "|---|---|---|---|---|---|"]
    for name in keys:
        r = runs[name]
        cells = [f"{r[k]:.2f}" + ("" if name == "Retrain" else f" ({r[k] - ret[k]:+.2f})")
                 for k in ("ppl_forget", "ppl_retain", "ppl_test")]
        cells.append(f"{r['mink_auc']:.3f}" + ("" if name == "Retrain" else f" ({r['mink_auc'] - ret['mink_auc']:+.3f})"))
        lines.append(f"| {name} | {' | '.join(cells)} | {r.get('seconds', 0):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
