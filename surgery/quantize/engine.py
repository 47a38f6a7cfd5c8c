"""`quantize(model, config, calib=...)`: one verb, one handler per config type (torchao's pattern).

Orchestration only: the arithmetic is in `quantizer`, `gptq` and `apiq`. RTN is data-free. GPTQ
and ApiQ go block by block: a finished block's quantized outputs are the next block's inputs
(ApiQ also carries the fp path for its targets). With `resume_dir`, every finished block is
committed to a checkpoint keyed on the model, the calibration windows and the config, so a killed
run resumes after its last block and a run with other inputs starts afresh.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery import dist
from surgery.checkpoint import Checkpoint, fingerprint
from surgery.config import to_dict
from surgery.errors import SurgeryError, require
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import BlockInputs, capture_block_inputs, module_device, onloaded, run_block
from surgery.models.modules import set_module
from surgery.models.targets import select
from surgery.quantize import resume
from surgery.quantize.apiq import train_block
from surgery.quantize.config import ApiQConfig, GPTQConfig, QuantConfig, RTNConfig
from surgery.quantize.gptq import HessianAccumulator, gptq_quantize
from surgery.quantize.lora import QuantLoRALinear
from surgery.quantize.quantizer import fake_quant, qparams
from surgery.quantize.result import LayerQuant, QuantResult
from surgery.saliency import SaliencyMap, score


@dataclass
class Job:
    """Everything a handler needs for one run."""

    model: nn.Module
    adapter: DecoderAdapter
    config: Any
    plan: dict[int, dict[str, int]]
    result: QuantResult
    calib: Any
    batch_size: int
    fisher: SaliencyMap | None
    resume_dir: str | None
    offload: bool
    progress: bool
    device: torch.device | None = None


Handler = Callable[[Job], None]
_HANDLERS: dict[type, Handler] = {}


def register(config_type: type) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        _HANDLERS[config_type] = fn
        return fn
    return deco


def plan_layers(adapter: DecoderAdapter, cfg: RTNConfig) -> dict[int, dict[str, int]]:
    """Block → {module name: group size} of the layers to quantize, with the group rule applied."""
    plan: dict[int, dict[str, int]] = {}
    for i in range(adapter.num_layers):
        named = adapter.block_linears(i)
        groups = {}
        for name in select(named, cfg.targets, cfg.ignore):
            width = named[name].in_features
            gs = width if cfg.strategy == "channel" else cfg.group_size
            if width % gs:
                if cfg.group_rule == "error":
                    raise SurgeryError(f"group_size {gs} does not divide the input width {width} of {name}; "
                                       "use a divisor or group_rule: channel (that layer per channel)")
                gs = width
            groups[name] = gs
        if groups:
            plan[i] = groups
    require(bool(plan), "no linear layer to quantize: targets/ignore select none of the block linears")
    return plan


def layer_quant(cfg: RTNConfig, width: int, group_size: int, scale: torch.Tensor, zero: torch.Tensor) -> LayerQuant:
    """One layer's grid, marked per-channel when asked or when the group rule fell back."""
    per_channel = cfg.strategy == "channel" or group_size != cfg.group_size
    return LayerQuant(cfg.num_bits, group_size, scale, zero, per_channel)


def calib_batches(calib: Any, batch_size: int, method: str) -> list[torch.Tensor]:
    """Calibration token windows as a list of [B, T] batches."""
    require(calib is not None, f"empty calibration data: {method} needs calibration windows")
    batches = list(calib.split(batch_size)) if isinstance(calib, torch.Tensor) else list(calib)
    require(len(batches) > 0 and all(b.numel() > 0 for b in batches), "empty calibration data: no token window")
    return batches


@register(RTNConfig)
def _rtn(job: Job) -> None:
    bits = job.config.num_bits
    for groups in job.plan.values():
        for name, gs in groups.items():
            lin = job.model.get_submodule(name)
            qp = qparams(lin.weight.detach(), bits, gs)
            with torch.no_grad():
                lin.weight.data = fake_quant(lin.weight, bits, gs, qp=qp)  # new storage: mapped weights stay clean
            job.result.layers[name] = layer_quant(job.config, lin.in_features, gs, qp.scale, qp.zero)


def _gptq_block(job: Job, i: int, q_in: BlockInputs) -> None:
    cfg, model, groups = job.config, job.model, job.plan.get(i, {})
    if not groups:
        return
    hess = {n: HessianAccumulator(model.get_submodule(n).in_features, model.get_submodule(n).weight.device)
            for n in groups}
    handles = [model.get_submodule(n).register_forward_hook(lambda mod, args, out, n=n: hess[n].add(args[0]))
               for n in groups]
    try:
        run_block(job.adapter.layers[i], q_in)
    finally:
        for h in handles:
            h.remove()
    for acc in hess.values():  # data-parallel: H over every rank's windows
        acc.n = dist.merge_means_([acc.H], acc.n)
    for name, gs in groups.items():
        lin = model.get_submodule(name)
        acc = hess.pop(name)  # each Hessian is freed once its layer is done
        if acc.n == 0:  # a MoE expert no calibration token reached: round to nearest
            qp = qparams(lin.weight.detach(), cfg.num_bits, gs)
            Q = fake_quant(lin.weight.detach(), cfg.num_bits, gs, qp=qp)
        else:
            Q, qp = gptq_quantize(lin.weight, acc.release(), cfg.num_bits, gs, cfg.damp, cfg.act_order,
                                  cfg.block_size, cfg.static_groups, overwrite=True)
        del acc
        with torch.no_grad():
            lin.weight.data = Q.to(lin.weight.dtype)  # new storage: mapped weights stay clean
        job.result.layers[name] = layer_quant(cfg, lin.in_features, gs, qp.scale, qp.zero)


def _apiq_block(job: Job, i: int, q_in: BlockInputs, fp_in: BlockInputs) -> list[torch.Tensor]:
    """Train block i; return its fp outputs on fp inputs (the next block's targets' inputs)."""
    cfg, model, groups = job.config, job.model, job.plan.get(i, {})
    block = job.adapter.layers[i]
    targets = run_block(block, fp_in, job.offload)  # fp block on fp inputs
    if not groups:
        return targets
    layers = {}
    gen = torch.Generator(device=next(block.parameters()).device).manual_seed(cfg.seed * 1000 + i)  # LoRA init
    for name, gs in groups.items():
        lin = model.get_submodule(name)
        f = None
        if job.fisher is not None:
            f = job.fisher[f"{name}.weight"].to(lin.weight.device, lin.weight.dtype)
        layers[name] = QuantLoRALinear(lin, cfg.num_bits, gs, cfg.lora_rank, cfg.lora_alpha, f, gen)
        set_module(model, name, layers[name])
    job.result.history[i] = train_block(block, layers, q_in, targets, cfg, cfg.saliency.lam_at(i), cfg.seed + i)
    for name, q in layers.items():
        layer, qp = q.finalize(merge=cfg.merge_lora)
        set_module(model, name, layer)
        job.result.layers[name] = layer_quant(cfg, q.in_features, groups[name], qp.scale, qp.zero)
    return targets


def fisher_windows(config: Any, calib: Any, batch_size: int = 8) -> tuple[torch.Tensor, int] | None:
    """The windows and batch size the regulariser's Fisher is scored on (None when it is off)."""
    if not isinstance(config, ApiQConfig) or not config.saliency.enabled:
        return None
    windows = torch.cat(calib_batches(calib, batch_size, config.method))
    return windows[: config.saliency.fisher_samples or windows.shape[0]], config.saliency.fisher_batch_size


def _fisher(job: Job) -> SaliencyMap | None:
    """The regulariser's Fisher map: given, or scored on the calibration windows."""
    plan = fisher_windows(job.config, job.calib, job.batch_size)
    if plan is None:
        return None
    weights = [f"{n}.weight" for g in job.plan.values() for n in g]
    fisher = job.fisher
    if fisher is None:
        windows, batch = plan
        fisher = score(job.model, list(windows.split(batch)), loss="causal_lm", kind="fisher",
                       include=["^" + w.replace(".", r"\.") + "$" for w in weights], progress=job.progress,
                       description=f"calibration windows ({windows.shape[0]})")
    require(fisher.kind == "fisher", f"the regulariser needs a fisher map, got {fisher.kind!r}")
    fisher.check_model(job.model)
    for w in weights:
        require(w in fisher, f"the fisher map has no entry for {w}")
    return fisher


def _blockwise(job: Job, carries_fp: bool) -> None:
    """Blocks in order on captured calibration inputs, one at a time on the compute device, each
    committed to the checkpoint and then memory-mapped back from it (released from memory)."""
    cfg, adapter = job.config, job.adapter
    batches = calib_batches(job.calib, job.batch_size, cfg.method)
    ckpt = None
    if job.resume_dir:
        fp = fingerprint(job.model, batches, to_dict(cfg), method=cfg.method,
                         fisher=job.fisher.metadata if job.fisher is not None else None)
        ckpt = Checkpoint(job.resume_dir, fp, "quantization")
    if carries_fp:
        with onloaded(job.model, job.device):
            job.fisher = _fisher(job)
    offload = job.offload or (job.device is not None and job.device != module_device(adapter.layers[0]))
    q_in = capture_block_inputs(adapter, dist.shard_rows(batches), offload, job.device)  # this rank's rows
    fp_in = q_in if carries_fp else None
    start = 0
    if ckpt is not None and ckpt.resuming:
        start, q_in, fp_in = resume.restore(ckpt, job.model, adapter, job.result, q_in, carries_fp)
    bar = tqdm(range(start, adapter.num_layers), desc=f"quantize[{cfg.label}]", disable=not job.progress,
               dynamic_ncols=True)
    for i in bar:
        block = adapter.layers[i]
        with onloaded(block, job.device):
            q_in = q_in.at(i)
            if carries_fp:
                fp_in = fp_in.with_hidden(_apiq_block(job, i, q_in, fp_in.at(i)), i + 1)
            else:
                _gptq_block(job, i, q_in)
            q_in = q_in.with_hidden(run_block(block, q_in, offload), i + 1)
        if ckpt is not None:
            resume.commit(ckpt, i, job.model, adapter, job.result, q_in, fp_in)
            q_in, fp_in = resume.release(ckpt, i, adapter, q_in, fp_in)


@register(GPTQConfig)
def _gptq(job: Job) -> None:
    _blockwise(job, carries_fp=False)


@register(ApiQConfig)
def _apiq(job: Job) -> None:
    _blockwise(job, carries_fp=True)


def quantize(model: nn.Module, config: QuantConfig, calib: Any = None, *, fisher: SaliencyMap | None = None,
             batch_size: int = 8, resume_dir: str | None = None, offload: bool = False,
             device: str | torch.device | None = None, progress: bool = True) -> QuantResult:
    """Quantize `model`'s decoder-block linears in place (weights left on the grid).

    Args:
        model: a supported causal LM (eval mode is set).
        config: `RTNConfig`, `GPTQConfig` or `ApiQConfig`.
        calib: calibration token windows `[n, T]` (split into batches of `batch_size`) or a list
            of batches; unused by RTN.
        fisher: a `SaliencyMap` of kind `fisher` for ApiQ's regulariser; scored on `calib` when
            the regulariser is on and none is given.
        resume_dir: checkpoint every finished block there; a rerun with the same model, windows
            and config resumes after the last one. Finished blocks and block inputs are then
            memory-mapped from their checkpoint files, so memory holds about one block at a time.
        offload: keep block inputs on CPU (for a model on an accelerator).
        device: the compute device; the model stays where it is and one block at a time moves there
            (sequential onloading). Default: where the model is.
        progress: a progress bar over blocks.
    """
    handler = _HANDLERS.get(type(config))
    require(handler is not None, f"no quantization method for {type(config).__name__}; "
            f"use one of {', '.join(t.__name__ for t in _HANDLERS)}")
    require(isinstance(batch_size, int) and batch_size > 0, f"batch_size must be a positive integer, got {batch_size}")
    t0 = time.time()
    adapter = DecoderAdapter(model)
    model.eval()
    result = QuantResult(config)
    job = Job(model, adapter, config, plan_layers(adapter, config), result, calib, batch_size, fisher,
              resume_dir, offload, progress, torch.device(device) if device is not None else None)
    handler(job)
    result.seconds = time.time() - t0
    return result
