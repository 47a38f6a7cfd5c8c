"""Does the sampler, not the model, decide how good the reference MNIST DDPM looks?

The original `mnist-ddpm` draws 20 images of each digit (guidance w, seed 0); `mnist16-cnn` judges
them (share recognised as the digit asked for). Samplers: our DDIM (x0 clipped to [-1, 1], ε
re-derived from it), DDIM with the raw guided ε beside the clipped x0 (diffusers' default, what
`surgery.diffusion.process.sample` did before 2026-12-07), and DDPM ancestral sampling. A sound
sampler should not get worse with more steps.

    SURGERY_DATA_DIR=../shared/data python benchmarks/diffusion_sampler.py [--steps 10 25 50 100]
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import save

from surgery.diffusion.model import image_shape, null_class, scheduler
from surgery.diffusion.process import predict, sample, to_pixels
from surgery.reference import load_reference


@torch.no_grad()
def diffusers_loop(model: torch.nn.Module, labels: torch.Tensor, steps: int, guidance: float,
                   kind: str) -> torch.Tensor:
    """The diffusers scheduler's own step: `ddim` with the raw guided ε, or `ddpm` ancestral."""
    sched = scheduler(model, kind)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(0)
    n = labels.numel()
    x = torch.randn((n, *image_shape(model)), generator=gen)
    both = torch.cat([labels, torch.full_like(labels, null_class(model))])
    for t in sched.timesteps:
        cond, uncond = predict(model, torch.cat([x, x]), t.expand(2 * n), both).float().chunk(2)
        x = sched.step(uncond + guidance * (cond - uncond), t, x, generator=gen).prev_sample
    return to_pixels(x)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    ap.add_argument("--guidance", type=float, nargs="+", default=[2.0, 3.0])
    ap.add_argument("--per-class", type=int, default=20)
    args = ap.parse_args()
    if min(args.steps) < 1 or args.per_class < 1:
        ap.error(f"--steps and --per-class must be positive, got {args.steps} and {args.per_class}")
    model, _, _ = load_reference("mnist-ddpm", progress=False)
    judge, _, _ = load_reference("mnist16-cnn", progress=False)
    labels = torch.arange(10).repeat_interleave(args.per_class)
    samplers = {"DDIM, ε from the clipped x0 (ours)": lambda s, w: sample(model, labels, s, w, seed=0),
                "DDIM, raw ε (before 2026-12-07)": lambda s, w: diffusers_loop(model, labels, s, w, "ddim"),
                "DDPM ancestral": lambda s, w: diffusers_loop(model, labels, s, w, "ddpm")}
    rows, lines = [], ["| sampler | guidance w | steps | recognised (%) | s |", "|---|---|---|---|---|"]
    for name, draw in samplers.items():
        for w in args.guidance:
            for steps in args.steps:
                t = time.time()
                images = draw(steps, w)
                with torch.no_grad():
                    acc = 100 * (judge(images).argmax(-1) == labels).float().mean().item()
                rows.append({"sampler": name, "guidance": w, "steps": steps, "recognised": acc,
                             "seconds": time.time() - t})
                lines.append(f"| {name} | {w:g} | {steps} | {acc:.1f} | {rows[-1]['seconds']:.0f} |")
                print(lines[-1], flush=True)
    save("diffusion_sampler", {"per_class": args.per_class, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
