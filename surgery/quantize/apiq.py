"""ApiQ-bw on one decoder block: LWC + LoRA trained jointly on the block-output MSE, with the
saliency-aware regulariser of Cao & Aref (2025) as an option.

Per step: loss = a·MSE(block_q(X_q), Y_fp) + λ_i·Σ_layers Σ F⊙(Q(W) − W)², where (a, λ factor)
come from the stage (`wpt` (0, 1), `mixedt` (1, 1), `opt` (1, 0)). One AdamW with two groups
(LWC, LoRA); learning rates are reset at every stage boundary. In a `wpt` stage the block is not
run at all (the loss does not depend on its output).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgery import dist
from surgery.models.blockwise import BlockInputs, block_forward
from surgery.quantize.config import STAGES, ApiQConfig
from surgery.quantize.lora import QuantLoRALinear


def train_block(block: nn.Module, layers: dict[str, QuantLoRALinear], inputs: BlockInputs,
                targets: list[torch.Tensor], cfg: ApiQConfig, lam: float, seed: int) -> dict[str, float]:
    """Train the block's LWC and LoRA parameters in place; returns the last losses per stage."""
    lwc = [p for q in layers.values() for p in q.lwc_parameters()]
    lora = [p for q in layers.values() for p in q.lora_parameters()]
    groups = [{"params": lwc, "lr": cfg.lr_lwc, "weight_decay": cfg.wd_lwc}]
    if lora:
        groups.append({"params": lora, "lr": cfg.lr_lora, "weight_decay": cfg.wd_lora})
    opt = torch.optim.AdamW(groups)
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, float] = {}
    for stage, epochs in cfg.stage_plan():
        a, lam_factor = STAGES[stage]
        lam_s = lam * lam_factor
        if a == 0 and lam_s == 0:
            continue
        for g, lr in zip(opt.param_groups, (cfg.lr_lwc, cfg.lr_lora)):
            g["lr"] = lr  # a new stage starts from the base learning rates
        for _ in range(epochs):
            for j in torch.randperm(len(inputs), generator=gen).tolist():
                loss = torch.zeros((), device=next(block.parameters()).device)
                if a:
                    out = block_forward(block, inputs.hidden[j], inputs.kwargs[j])
                    mse = F.mse_loss(out, targets[j].to(out.device))
                    loss = loss + a * mse
                    history[f"{stage}_mse"] = float(mse.detach())
                if lam_s:
                    reg = sum(q.regulariser(cfg.saliency.target == "after_lora") for q in layers.values())
                    loss = loss + lam_s * reg
                    history[f"{stage}_reg"] = float(reg.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                dist.average_grads_(lwc + lora)  # data-parallel: the global batch's gradient
                opt.step()
    return history
