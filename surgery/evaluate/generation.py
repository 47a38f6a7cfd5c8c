"""How a class-conditional generator is judged after forgetting a class, as SalUn measures it.

A classifier trained on the real images (the *judge*) looks at generated images:
- UA: the share (%) of images generated for the forgotten class that the judge does **not**
  assign to it (SalUn's unlearning accuracy for generation);
- retained accuracy: the share of images generated for each other class that the judge assigns
  to the class they were generated for (per class, and the mean);
- judge-feature FID: the Fréchet distance between the judge's penultimate features of generated
  retained-class images and of real test images of those classes. It is *not* the Inception FID
  of the paper (no Inception network here): lower is better, comparable only between models
  judged by the same classifier on the same images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from surgery.data.images import ImageSet
from surgery.diffusion.process import sample
from surgery.errors import require


@dataclass
class GenerationReport:
    UA: float
    retain_acc: float
    feature_fid: float
    per_class_acc: dict[int, float] = field(default_factory=dict)
    forget_images: torch.Tensor | None = None  # a few samples of each, for the grid
    retain_images: torch.Tensor | None = None

    def summary(self) -> dict[str, float]:
        return {"UA": round(self.UA, 2), "retain_acc": round(self.retain_acc, 2),
                "feature_fid": round(self.feature_fid, 3),
                "per_class_acc": {str(k): round(v, 1) for k, v in self.per_class_acc.items()}}


def _last_linear(judge: nn.Module) -> nn.Linear:
    linears = [m for m in judge.modules() if isinstance(m, nn.Linear)]
    require(len(linears) > 0, "the judge classifier has no linear layer to read features from")
    return linears[-1]


@torch.no_grad()
def judge_outputs(judge: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, penultimate features = the input of the judge's last linear layer)."""
    judge.eval()
    device = next(judge.parameters()).device
    feats: list[torch.Tensor] = []
    hook = _last_linear(judge).register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().float().cpu()))
    preds = []
    try:
        for chunk in images.split(batch_size):
            preds.append(judge(chunk.to(device)).argmax(-1).cpu())
    finally:
        hook.remove()
    return torch.cat(preds), torch.cat(feats)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2(ΣaΣb)^½) between two feature sets [N, D]."""
    from scipy import linalg

    require(len(a) > 1 and len(b) > 1, "the Fréchet distance needs at least two samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    eps = 1e-6 * np.eye(cov_a.shape[0])  # dead ReLU features make the product singular: regularise
    covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def generation_metrics(model: nn.Module, judge: nn.Module, forget_class: int, real: ImageSet,
                       forget_samples: int = 500, per_class: int = 100, steps: int = 50, guidance: float = 2.0,
                       seed: int = 0, keep: int = 8) -> GenerationReport:
    """UA, retained-class accuracy and judge-feature FID of `model`'s samples (see module doc).
    `real` are held-out real images (the FID reference: its retained classes)."""
    classes = len(real.classes)
    require(0 <= forget_class < classes, f"forget class {forget_class} does not exist (0..{classes - 1})")
    retained = [c for c in range(classes) if c != forget_class]
    f_img = sample(model, torch.full((forget_samples,), forget_class), steps, guidance, seed)
    f_pred, _ = judge_outputs(judge, f_img)
    ua = 100.0 * float((f_pred != forget_class).double().mean())
    labels = torch.tensor(retained).repeat_interleave(per_class)
    r_img = sample(model, labels, steps, guidance, seed + 1)
    r_pred, r_feat = judge_outputs(judge, r_img)
    per = {c: 100.0 * float((r_pred[labels == c] == c).double().mean()) for c in retained}
    keep_real = torch.isin(real.y, torch.tensor(retained))
    _, real_feat = judge_outputs(judge, real.floats(torch.nonzero(keep_real).flatten()))
    fid = frechet_distance(r_feat.double().numpy(), real_feat.double().numpy())
    grid_rows = torch.stack([r_img[labels == c][:keep] for c in retained])
    return GenerationReport(ua, float(np.mean(list(per.values()))), fid, per, f_img[:keep], grid_rows)


def save_grid(rows: list[torch.Tensor], path: str | Path, scale: int = 4) -> Path:
    """A PNG grid: one row per tensor of images [k, C, H, W] in [0, 1] (rows padded to the longest)."""
    from PIL import Image

    require(len(rows) > 0, "no images for the grid")
    c, h, w = rows[0].shape[1:]
    width = max(r.shape[0] for r in rows)
    canvas = torch.ones((c, len(rows) * (h + 1), width * (w + 1)))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[:, i * (h + 1) : i * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = img
    arr = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    img.save(path)
    return path


__all__ = ["GenerationReport", "frechet_distance", "generation_metrics", "judge_outputs", "save_grid"]
