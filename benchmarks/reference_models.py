"""Build (or load from cache) every reference model and print its quality and build time.

    SURGERY_DATA_DIR=../shared/data python benchmarks/reference_models.py [--names ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import save

from surgery.models import load_model
from surgery.reference import REFERENCES, build, info


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--names", nargs="+", default=list(REFERENCES))
    args = ap.parse_args()
    rows, out = [], {}
    for name in args.names:
        path = build(name, progress=sys.stderr.isatty())
        meta = info(path)
        model, _ = load_model(path)
        params = f"{sum(p.numel() for p in model.parameters()):,}"
        out[name] = {**meta, "params": params}
        q = meta["quality"]
        quality = ", ".join(f"{k} {v:.2f}" for k, v in q.items())
        spec = meta["spec"]
        data = spec.get("corpus") or spec.get("dataset")
        rows.append(f"| {name} | {data} | {params} | {quality} | {meta['build_seconds']:.0f} |")
    table = ("| model | data | parameters | quality (ppl: GPTQ protocol at the model's seqlen; acc: %) "
             "| build seconds (2 CPU cores) |\n|---|---|---|---|---|\n" + "\n".join(rows))
    save("reference_models", {"models": out}, table)


if __name__ == "__main__":
    main()
