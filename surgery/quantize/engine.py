"""`quantize(model, QuantConfig, calib=...)`: RTN, GPTQ or ApiQ-bw (± saliency regulariser) over the
decoder blocks, in place; returns a `QuantResult` with every layer's grid for export.

Orchestration only: the arithmetic is in `quantizer`, `gptq` and `apiq`. Blocks go in order; a
finished block's quantized outputs are the next block's inputs (ApiQ also carries the fp path for
its targets). With `resume_dir`, each finished block is checkpointed and a rerun continues after
the last one.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery import dist
from surgery.errors import SurgeryError, require
from surgery.models.adapters import ATTN_ROLES, MLP_ROLES, DecoderAdapter
from surgery.models.blockwise import BlockInputs, capture_block_inputs, run_block
from surgery.models.targets import select
from surgery.quantize.apiq import train_block
from surgery.quantize.checkpoint import BlockCheckpoint
from surgery.quantize.config import QuantConfig
from surgery.quantize.gptq import HessianAccumulator, gptq_quantize
from surgery.quantize.lora import QuantLoRALinear
from surgery.quantize.quantizer import fake_quant, qparams
from surgery.quantize.result import LayerQuant, QuantResult
from surgery.saliency import SaliencyMap, score


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def plan_layers(adapter: DecoderAdapter, cfg: QuantConfig) -> dict[int, dict[str, int]]:
    """Block → {module name: group size} of the layers to quantize, with the group rule applied."""
    plan: dict[int, dict[str, int]] = {}
    for i in range(adapter.num_layers):
        named = {adapter.module_name(i, r): adapter.proj(i, r) for r in ATTN_ROLES + MLP_ROLES}
        chosen = select(named, cfg.targets, cfg.ignore)
        groups = {}
        for name in chosen:
            width = named[name].in_features
            gs = width if cfg.strategy == "channel" else cfg.group_size
            if width % gs:
                if cfg.group_rule == "error":
                    raise SurgeryError(f"group_size {gs} does not divide the input width {width} of "
                                       f"{name}; use a divisor or group_rule='channel'")
                gs = width
            groups[name] = gs
        if groups:
            plan[i] = groups
    require(bool(plan), "no linear layer to quantize: targets/ignore select none of the block linears")
    return plan


def calib_batches(calib: Any, cfg: QuantConfig) -> list[torch.Tensor]:
    """Calibration token windows as a list of [B, T] batches."""
    if calib is None:
        raise SurgeryError(f"empty calibration data: {cfg.method} needs calibration windows")
    batches = list(calib.split(cfg.batch_size)) if isinstance(calib, torch.Tensor) else list(calib)
    require(len(batches) > 0 and all(b.numel() > 0 for b in batches),
            "empty calibration data: no token window")
    return batches


def _rtn(model: nn.Module, plan: dict[int, dict[str, int]], cfg: QuantConfig, result: QuantResult) -> None:
    for i, groups in plan.items():
        for name, gs in groups.items():
            lin = model.get_submodule(name)
            qp = qparams(lin.weight.detach(), cfg.num_bits, gs)
            with torch.no_grad():
                lin.weight.copy_(fake_quant(lin.weight, cfg.num_bits, gs, qp=qp))
            result.layers[name] = LayerQuant(cfg.num_bits, gs, qp.scale, qp.zero)


def _gptq_block(model: nn.Module, block: nn.Module, groups: dict[str, int], inputs: BlockInputs,
                cfg: QuantConfig, result: QuantResult) -> None:
    hess = {n: HessianAccumulator(model.get_submodule(n).in_features, model.get_submodule(n).weight.device)
            for n in groups}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda mod, args, out, n=n: hess[n].add(args[0])) for n in groups]
    try:
        run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    for acc in hess.values():  # data-parallel: H over every rank's windows
        acc.n = dist.merge_means_([acc.H], acc.n)
    for name, gs in groups.items():
        lin = model.get_submodule(name)
        Q, qp = gptq_quantize(lin.weight, hess[name].H, cfg.num_bits, gs, cfg.damp, cfg.act_order,
                              cfg.block_size, cfg.static_groups)
        with torch.no_grad():
            lin.weight.copy_(Q.to(lin.weight.dtype))
        result.layers[name] = LayerQuant(cfg.num_bits, gs, qp.scale, qp.zero)


def _apiq_block(model: nn.Module, block: nn.Module, index: int, groups: dict[str, int],
                q_in: BlockInputs, targets: list[torch.Tensor], cfg: QuantConfig,
                fisher: SaliencyMap | None, result: QuantResult) -> None:
    layers = {}
    gen = torch.Generator(device=model.device).manual_seed(cfg.seed * 1000 + index)  # LoRA init
    for name, gs in groups.items():
        lin = model.get_submodule(name)
        f = None
        if fisher is not None and cfg.saliency_lambda > 0:
            f = fisher[f"{name}.weight"].to(lin.weight.device, lin.weight.dtype)
        layers[name] = QuantLoRALinear(lin, cfg.num_bits, gs, cfg.lora_rank, cfg.lora_alpha, f, gen)
        set_module(model, name, layers[name])
    lam = cfg.saliency_lambda * cfg.saliency_multiplier**index
    result.history[index] = train_block(block, layers, q_in, targets, cfg, lam, cfg.seed + index)
    for name, q in layers.items():
        layer, qp = q.finalize()
        set_module(model, name, layer)
        result.layers[name] = LayerQuant(cfg.num_bits, groups[name], qp.scale, qp.zero)


def quantize(model: nn.Module, config: QuantConfig, calib: Any = None,
             fisher: SaliencyMap | None = None, progress: bool = True) -> QuantResult:
    """Quantize `model`'s decoder-block linears in place (weights left on the grid).

    Args:
        model: a Llama / Mistral / Qwen2 causal LM (eval mode is set).
        config: the method and its settings.
        calib: calibration token windows `[n, T]` (or a list of batches); unused by `rtn`.
        fisher: a `SaliencyMap` of kind `fisher` for the regulariser; computed from `calib` with
            `surgery.score` when `saliency_lambda > 0` and none is given.
        progress: a progress bar over blocks.
    """
    t0 = time.time()
    cfg = config
    adapter = DecoderAdapter(model)
    model.eval()
    plan = plan_layers(adapter, cfg)
    result = QuantResult(cfg)
    if cfg.method == "rtn":
        _rtn(model, plan, cfg, result)
        result.seconds = time.time() - t0
        return result
    batches = calib_batches(calib, cfg)
    if cfg.method == "apiq" and cfg.saliency_lambda > 0:
        weights = [f"{n}.weight" for g in plan.values() for n in g]
        if fisher is None:
            n_fisher = cfg.fisher_samples or sum(b.shape[0] for b in batches)
            fisher_batches = list(torch.cat(batches)[:n_fisher].split(cfg.fisher_batch_size))
            fisher = score(model, fisher_batches, loss="causal_lm", kind="fisher",
                           include=[f"^{w}$".replace(".", r"\.") for w in weights], progress=progress,
                           description=f"calibration windows ({n_fisher})")
        require(fisher.kind == "fisher", f"the regulariser needs a fisher map, got {fisher.kind!r}")
        fisher.check_model(model)
        for w in weights:
            require(w in fisher, f"the fisher map has no entry for {w}")
    batches = dist.shard_rows(batches)  # data-parallel: this rank's rows of every batch
    ckpt = BlockCheckpoint(cfg.resume_dir, cfg.fingerprint()) if cfg.resume_dir else None
    q_in = capture_block_inputs(adapter, batches, cfg.offload)
    fp_in = q_in
    start = 0
    if ckpt is not None and ckpt.done >= 0:
        start, q_in, fp_in = ckpt.restore(model, adapter, result, q_in)
    bar = tqdm(range(start, adapter.num_layers), desc=f"quantize[{cfg.label}]", disable=not progress,
               dynamic_ncols=True)
    for i in bar:
        block = adapter.layers[i]
        groups = plan.get(i, {})
        if cfg.method == "gptq":
            if groups:
                _gptq_block(model, block, groups, q_in, cfg, result)
        else:
            targets = run_block(block, fp_in, cfg.offload)  # fp block on fp inputs
            if groups:
                _apiq_block(model, block, i, groups, q_in, targets, cfg, fisher, result)
            fp_in = fp_in.with_hidden(targets)
        q_in = q_in.with_hidden(run_block(block, q_in, cfg.offload))
        if ckpt is not None:
            ckpt.save(i, model, adapter, result, q_in, fp_in if cfg.method == "apiq" else None)
    result.seconds = time.time() - t0
    return result
