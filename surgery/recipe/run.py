"""`surgery run RECIPE --model PATH --output DIR`: run a recipe's stages, write one output folder.

The folder (written atomically; an existing one is kept unless `overwrite`) holds the model
(compressed-tensors when quantized, plain safetensors otherwise), the resolved `recipe.yaml`, a
model card `README.md`, `metrics.json` and `versions.json`. Long stages checkpoint into
`<output>.partial/`, so a killed run resumes there.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from surgery import dist
from surgery.data.windows import calib_windows, eval_windows, tokenize
from surgery.errors import SurgeryError, require
from surgery.evaluate import compare
from surgery.evaluate.cost import size_on_disk
from surgery.io import atomic_dir
from surgery.models.io import load_model, save_model
from surgery.recipe.card import dump_recipe, model_card, versions
from surgery.recipe.maps import SharedMaps
from surgery.recipe.schema import Recipe, parse


def _load(source: str, data_dir: str | None, progress: bool) -> tuple[torch.nn.Module, Any, str]:
    if Path(source).exists() or os.sep in source or source.startswith("."):
        model, tok = load_model(source)
        return model.eval(), tok, str(source)
    from surgery.reference import REFERENCES, load_reference

    if source not in REFERENCES:
        raise SurgeryError(f"model folder not found: {source} (and not a reference model: "
                           f"{', '.join(REFERENCES)})")
    model, tok, path = load_reference(source, data_dir, progress=progress)
    return model.eval(), tok, str(path)


def _text(source: str, data_dir: str | None) -> str:
    from surgery.cli.common import read_text

    return read_text(source, "test", data_dir)


def _unlearn_table(m: dict[str, Any] | None) -> str:
    if not m:
        return ""
    keys = list(m["before"])
    rows = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in ("before", "after"):
        rows.append(f"| {name} | " + " | ".join(f"{m[name][k]:.2f}" for k in keys) + " |")
    return "\n".join(rows) + f"\n\nRTE {m['rte_seconds']} s (mask {m['mask_seconds']} s)."


def _data_line(recipe: Recipe, unlearned: dict[str, Any] | None, calibrated: Any) -> str:
    parts = []
    if unlearned:
        d = next(st.config["data"] for st in recipe.stages if st.kind == "unlearn")
        parts.append("forget set " + ", ".join(f"{k}={v}" for k, v in d.items()))
    if calibrated:
        c = recipe.calibration
        parts.append(f"calibration {c.data} ({c.nsamples} × {c.seqlen} tokens, seed {c.seed})")
    return "; ".join(parts) or "none"


def _label(pruned: Any, quant: Any, unlearned: dict[str, Any] | None = None) -> str:
    parts = []
    if unlearned:
        parts.append(f"unlearned ({unlearned['method']}{', SalUn mask' if unlearned.get('masked') else ''})")
    if pruned is not None:
        parts.append(f"pruned {100 * pruned.achieved_sparsity:.1f}%")
    if quant is not None:
        parts.append(quant.config.label)
    return " + ".join(parts) or "unchanged"


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise SurgeryError(f"output folder exists: {output} (pass --overwrite to replace it)")
    parent = output.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    require(probe.is_dir() and os.access(probe, os.W_OK), f"output folder is not writable: {parent}")


def run_recipe(recipe_path: str, output: str, model: str | None = None, overrides: list[str] | None = None,
               overwrite: bool = False, data_dir: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Run every stage of the recipe in order; return the metrics written to metrics.json."""
    recipe: Recipe = parse(recipe_path, overrides)
    out = Path(output)
    _check_output(out, overwrite)
    source = model or recipe.model
    require(source is not None, "no model: pass --model or set `model:` in the recipe")
    net, tok, base_path = _load(source, data_dir, progress)
    dense = copy.deepcopy(net)
    partial = out.with_name(f".{out.name}.partial")
    metrics: dict[str, Any] = {"stages": []}
    quant = None
    pruned = None
    unlearned = None
    extra_writers: list = []
    calib = None
    shared = SharedMaps()
    calib_desc = (f"{recipe.calibration.data} ({recipe.calibration.nsamples} windows of "
                  f"{recipe.calibration.seqlen}, seed {recipe.calibration.seed})")
    t0 = time.time()
    for stage in recipe.stages:
        st = time.time()
        if stage.kind == "unlearn":
            from surgery.recipe import unlearn_stage

            unlearned, writers = unlearn_stage.run(net, tok, stage, lambda src: _text(src, data_dir), data_dir,
                                                  progress)
            extra_writers.extend(writers)
            metrics["stages"].append(unlearned)
            shared.drop()
        elif stage.kind == "prune":
            from surgery.prune import prune

            require(tok is not None, "the model has no tokenizer; cannot read calibration text")
            ids = tokenize(tok, _text(recipe.calibration.data, data_dir))
            cfg = dataclasses.replace(stage.config, resume_dir=str(partial / stage.name))
            windows = calib_windows(ids, cfg.nsamples, cfg.seqlen, cfg.seed)
            search = calib_windows(ids, cfg.search_samples, cfg.seqlen, cfg.seed + 1)
            smap = None
            if cfg.start == "saliency" or cfg.prescreen < 1.0 or cfg.trade_budget:
                data = (f"{recipe.calibration.data} ({cfg.nsamples} windows of {cfg.seqlen}, seed {cfg.seed})")
                smap = shared.get(net, cfg.saliency_kind, windows, data, stage.name, progress)
            result = prune(net, cfg, windows, search, progress=progress, saliency=smap)
            net = result.slice()
            shared.after_prune(result)
            pruned = result
            metrics["stages"].append({"stage": stage.name, "modifier": stage.modifier, **result.summary()})
        elif stage.kind == "quant":
            from surgery.quantize import quantize

            if calib is None and stage.config.method != "rtn":
                require(tok is not None, "the model has no tokenizer; cannot read calibration text")
                ids = tokenize(tok, _text(recipe.calibration.data, data_dir))
                calib = calib_windows(ids, recipe.calibration.nsamples, recipe.calibration.seqlen,
                                      recipe.calibration.seed)
            cfg = dataclasses.replace(stage.config, resume_dir=str(partial / stage.name))
            fisher = None
            if cfg.method == "apiq" and cfg.saliency_lambda > 0 and cfg.fisher_batch_size == 1 \
                    and cfg.fisher_samples in (None, calib.shape[0]):
                fisher = shared.get(net, "fisher", calib, calib_desc, stage.name, progress)
            quant = quantize(net, cfg, calib=calib, fisher=fisher, progress=progress)
            shared.drop()
            metrics["stages"].append({"stage": stage.name, "modifier": stage.modifier,
                                      **quant.summary(), "lora_params": quant.lora_params(net)})
        elif stage.kind == "eval":
            ev = stage.config
            require(tok is not None, "the model has no tokenizer; cannot read evaluation text")
            sets = {d: eval_windows(tokenize(tok, _text(d, data_dir)), ev.seqlen, ev.max_windows) for d in ev.data}
            reports = [compare.evaluate_lm(dense, sets, "dense", speed=ev.speed),
                       compare.evaluate_lm(net, sets, _label(pruned, quant, unlearned), dense=dense, speed=ev.speed)]
            metrics["comparison"] = compare.to_json(reports)
            metrics["table"] = compare.to_markdown(reports)
            metrics["stages"].append({"stage": stage.name, "seconds": round(time.time() - st, 2)})
    metrics["seconds"] = round(time.time() - t0, 2)
    metrics["saliency_maps"] = shared.log
    if dist.is_main():  # data-parallel: every rank computed the same model; one writes it
        _write(out, overwrite, net, quant, pruned, unlearned, tok, dense, metrics, extra_writers, recipe, base_path)
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    return metrics


def _write(out: Path, overwrite: bool, net, quant, pruned, unlearned, tok, dense, metrics: dict[str, Any],
           extra_writers: list, recipe: Recipe, base_path) -> None:
    """The output folder, atomically: model, recipe.yaml, metrics.json, versions.json, README.md."""
    recipe_text = dump_recipe(recipe.raw)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model_dir = tmp / "_model"
        if quant is not None:
            from surgery.quantize.export import export

            export(net, quant, model_dir, tokenizer=tok)
        else:
            save_model(net, model_dir, tokenizer=tok)
        metrics["disk_bytes"] = {"dense_fp": sum(p.numel() * p.element_size() for p in dense.parameters()),
                                 "result": size_on_disk(model_dir)}
        for f in model_dir.iterdir():
            f.rename(tmp / f.name)
        model_dir.rmdir()
        for write in extra_writers:
            write(tmp)
        (tmp / "recipe.yaml").write_text(recipe_text)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        (tmp / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
        tags = (["unlearning"] if unlearned else []) + (["pruned"] if pruned else []) + \
            (["quantized"] if quant else [])
        (tmp / "README.md").write_text(model_card(
            base_path, "quantized" if quant else "finetune", tags,
            _label(pruned, quant, unlearned),
            _data_line(recipe, unlearned, pruned or quant),
            metrics.get("table") or _unlearn_table(unlearned) or "(no eval_stage)", recipe_text))
