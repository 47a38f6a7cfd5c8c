"""`surgery run RECIPE --model PATH --output DIR`: run a recipe's stages, write one output folder.

Everything a run needs is checked before the model loads: the recipe, the output folder, every
stage's data. The folder (written atomically; an existing one only replaced with `overwrite` and
only if it is a previous surgery output) holds the model (compressed-tensors when quantized,
safetensors otherwise, remote code for heterogeneous widths), the resolved `recipe.yaml`, a model
card `README.md`, `metrics.json` and `versions.json`. Long stages checkpoint into
`.<output>.partial/`, so a killed run resumes there; `overwrite` (or a run of another model or
data, which the checkpoints detect) starts afresh.

Devices (`device:` / `--device`): the model is loaded on CPU in `dtype:` (memory-mapped), the
quantize stage moves one decoder block at a time to the device (sequential onloading), and the
stages that need the whole model at once (scoring, pruning, unlearning) move it there. The
written folder and its evaluation run from the device too; the files are the same.
"""
from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from surgery import dist
from surgery.data.sources import read_text
from surgery.data.windows import check_vocab, eval_windows, mixed_calib_windows, tokenize
from surgery.errors import require
from surgery.evaluate import compare
from surgery.export.card import model_card, versions
from surgery.evaluate.cost import size_on_disk
from surgery.export.folders import write_marker
from surgery.io import atomic_dir, dumps_json
from surgery.log import note
from surgery.models.io import DTYPES, load_model, write_model
from surgery.recipe.maps import SharedMaps
from surgery.recipe.plan import Plan, prepare
from surgery.recipe.schema import Recipe, Stage


@dataclass
class RunState:
    """What the stages have done so far."""

    net: torch.nn.Module
    tok: Any
    data_dir: str | None
    partial: Path
    progress: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quant: Any = None
    quant_export: dict[str, Any] | None = None
    pruned: Any = None
    unlearned: dict[str, Any] | None = None
    writers: list = field(default_factory=list)
    shared: SharedMaps = field(default_factory=SharedMaps)
    metrics: dict[str, Any] = field(default_factory=lambda: {"stages": []})
    texts: dict[str, str] = field(default_factory=dict)

    def ids(self, source: str) -> torch.Tensor:
        require(self.tok is not None, "the model has no tokenizer; cannot read text")
        if source not in self.texts:
            self.texts[source] = read_text(source, self.data_dir)
        ids = tokenize(self.tok, self.texts[source])
        check_vocab(ids, self.net.get_input_embeddings().num_embeddings, source)
        return ids

    def calib_windows(self, calib: Any, nsamples: int, seed: int) -> torch.Tensor:
        """Windows of the calibration text(s), drawn evenly from each source."""
        return mixed_calib_windows([self.ids(s) for s in calib.sources], nsamples, calib.seqlen, seed)

    @property
    def label(self) -> str:
        parts = []
        if self.unlearned:
            parts.append(f"unlearned ({self.unlearned['method']}{', SalUn mask' if self.unlearned.get('masked') else ''})")
        if self.pruned is not None:
            parts.append(f"pruned {100 * self.pruned.achieved_sparsity:.1f}%")
        if self.quant is not None:
            parts.append(self.quant.label)
        return " + ".join(parts) or "unchanged"


def _prune(st: RunState, stage: Stage, recipe: Recipe) -> None:
    from surgery.prune import prune

    cfg, calib = stage.config, stage.calibration(recipe.calibration)
    windows = st.calib_windows(calib, calib.nsamples, calib.seed)
    search = st.calib_windows(calib, cfg.search_samples, calib.seed + 1)
    st.net.to(st.device)  # the supernet and the search run the whole model
    smap = None
    if cfg.uses_saliency:
        desc = calib.description
        smap = st.shared.get(st.net, cfg.saliency_kind, windows, 1, desc, stage.name, progress=st.progress)
    result = prune(st.net, cfg, windows, search, saliency=smap, resume_dir=str(st.partial / stage.name),
                   progress=st.progress)
    st.net = result.slice()
    st.shared.after_prune(result)
    st.pruned = result
    st.metrics["stages"].append({"stage": stage.name, "modifier": stage.modifier, **result.summary()})


def _quant(st: RunState, stage: Stage, recipe: Recipe) -> None:
    from surgery.quantize import quantize
    from surgery.quantize.engine import fisher_windows

    cfg, calib = stage.config, stage.calibration(recipe.calibration)
    windows = None
    if cfg.method != "rtn":
        windows = st.calib_windows(calib, calib.nsamples, calib.seed)
    fisher = None
    plan = fisher_windows(cfg, windows, calib.batch_size) if windows is not None else None
    if plan is not None:
        desc = calib.description
        st.net.to(st.device)  # the scorer needs the whole model (and its gradients) at once
        fisher = st.shared.get(st.net, "fisher", plan[0], plan[1], desc, stage.name, progress=st.progress)
    st.quant = quantize(st.net, cfg, calib=windows, fisher=fisher, batch_size=calib.batch_size,
                        resume_dir=str(st.partial / stage.name), device=st.device, progress=st.progress)
    st.shared.drop()
    st.metrics["stages"].append({"stage": stage.name, "modifier": stage.modifier, **st.quant.summary(),
                                 "lora_params": st.quant.lora_params(st.net)})


def _eval(st: RunState, stage: Stage, dense: torch.nn.Module, base_path: str, folder: Path, name: str) -> None:
    """Dense vs the folder just written (loaded as its card says): the comparison files go beside it."""
    from surgery.recipe.report import evaluate_folders

    ev = stage.spec
    t0 = time.time()
    sets = {d: eval_windows(st.ids(d), ev.seqlen, ev.max_windows) for d in ev.data}
    dense.to(st.device)
    reports = evaluate_folders(dense, base_path, st.tok, sets, {name: folder}, speed=ev.speed, tasks=ev.tasks,
                               data_dir=st.data_dir, batch_size=ev.batch_size)
    compare.write(reports, folder)
    st.metrics["comparison"] = compare.to_json(reports)
    st.metrics["table"] = compare.to_markdown(reports)
    st.metrics["stages"].append({"stage": stage.name, "seconds": round(time.time() - t0, 2)})


def _unlearn(st: RunState, stage: Stage) -> None:
    from surgery.recipe import unlearn_stage

    st.net.to(st.device)
    st.unlearned, writers = unlearn_stage.run(st.net, st.tok, stage, lambda src: read_text(src, st.data_dir),
                                              st.data_dir, st.progress)
    st.writers.extend(writers)
    st.metrics["stages"].append(st.unlearned)
    st.shared.drop()


def run_recipe(recipe_path: str, output: str, model: str | None = None, overrides: list[str] | None = None,
               overwrite: bool = False, data_dir: str | None = None, progress: bool = False,
               device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Check everything, then run every stage of the recipe in order; return the metrics."""
    plan = prepare(recipe_path, output, model, overrides, overwrite, data_dir, progress, device, dtype)
    return execute(plan, overwrite, data_dir, progress)


def execute(plan: Plan, overwrite: bool = False, data_dir: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Run a prepared recipe and write its output folder."""
    recipe, out = plan.recipe, plan.out
    partial = out.with_name(f".{out.name}.partial")
    if overwrite and partial.exists() and dist.is_main():
        note(f"--overwrite: clearing the checkpoints of an earlier run in {partial}")
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    device = dist.resolve_device(recipe.device)
    net, tok = load_model(plan.base_path, dtype=DTYPES[recipe.dtype])
    dense = copy.deepcopy(net)
    st = RunState(net, tok, data_dir, partial, progress, device)
    t0 = time.time()
    for stage in recipe.stages:
        if stage.kind == "unlearn":
            _unlearn(st, stage)
        elif stage.kind == "prune":
            _prune(st, stage, recipe)
        elif stage.kind == "quant":
            _quant(st, stage, recipe)
    if dist.is_main():  # data-parallel: every rank computed the same model; one writes it
        _write(out, overwrite, st, dense, recipe, plan.source, str(plan.base_path), t0)
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    return st.metrics


def _data_line(recipe: Recipe, st: RunState) -> str:
    parts = []
    if st.unlearned:
        d = next(s.spec.data for s in recipe.stages if s.kind == "unlearn")
        parts.append("forget set " + ", ".join(f"{k}={v}" for k, v in vars(d).items() if v is not None))
    if st.pruned is not None or st.quant is not None:
        c = recipe.calibration
        parts.append(f"calibration {' + '.join(c.sources)} ({c.nsamples} × {c.seqlen} tokens, seed {c.seed})")
    return "; ".join(parts) or "none"


def _unlearn_table(m: dict[str, Any] | None) -> str:
    if not m:
        return ""
    keys = list(m["before"])
    rows = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in ("before", "after"):
        rows.append(f"| {name} | " + " | ".join(f"{m[name][k]:.2f}" for k in keys) + " |")
    return "\n".join(rows) + f"\n\nRTE {m['rte_seconds']} s (mask {m['mask_seconds']} s)."


def _write(out: Path, overwrite: bool, st: RunState, dense: torch.nn.Module, recipe: Recipe, source: str,
           base_path: str, t0: float) -> None:
    """The output folder, atomically: model, its evaluation (eval_stage), recipe.yaml, metrics.json,
    versions.json, README.md."""
    st.net.to("cpu")  # files are written from host memory
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if st.quant is not None:
            from surgery.quantize.save import write_quantized

            st.quant_export = write_quantized(st.net, st.quant, tmp, tokenizer=st.tok)
        else:
            write_model(st.net, tmp, tokenizer=st.tok)
        st.metrics["disk_bytes"] = {"dense": size_on_disk(base_path), "result": size_on_disk(tmp)}
        for stage in recipe.stages:
            if stage.kind == "eval":
                _eval(st, stage, dense, base_path, tmp, st.label)
        st.metrics["seconds"] = round(time.time() - t0, 2)
        st.metrics["saliency_maps"] = st.shared.log
        for write in st.writers:
            write(tmp)
        recipe_text = recipe.dump(model=source)
        (tmp / "recipe.yaml").write_text(recipe_text)
        (tmp / "metrics.json").write_text(dumps_json(st.metrics))
        (tmp / "versions.json").write_text(dumps_json(versions()))
        write_marker(tmp, "recipe", label=st.label, base_model=base_path)
        tags = (["unlearning"] if st.unlearned else []) + (["pruned"] if st.pruned else []) + \
            (["quantized"] if st.quant else [])
        (tmp / "README.md").write_text(model_card(
            tmp, base_path, "quantized" if st.quant else "finetune", tags, st.label, _data_line(recipe, st),
            st.metrics.get("table") or _unlearn_table(st.unlearned) or "(no eval_stage)", recipe_text,
            quant=st.quant_export, name=out.name))
