"""Evolutionary search over per-sub-layer sparsity levels (EvoPress / Týr (1+λ) scheme).

A child is the parent with min(U{1..4}, U{1..4}) level switches; a switch moves one step of
sparsity from one sub-layer to another of the same type, so each type's parameter count — and the
budget — stays exactly where it was. Duplicates are rejected. Selection is multi-stage: every
child is scored on a few calibration windows, the best few on more, and the finalists plus the
parent (elitism) on the most; fitness = KL between the dense model's top-k logits and the
candidate's logits at the same token ids (both renormalised over those ids). With `resample`
(Týr's protocol) every stage of every generation draws its windows afresh from the pool, and the
parent is re-scored on the final stage's draw, so the search cannot fit one fixed set of windows.
"""
from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from surgery import dist
from surgery.checkpoint import Checkpoint
from surgery.evaluate.lm import dense_topk, kl_terms
from surgery.prune.config import SearchConfig
from surgery.prune.units import Dist, SubKey, dist_from_json, dist_to_json


class TopKFitness:
    """KL(dense top-k ‖ candidate at the same ids), mean over the predicted tokens of a set of windows.

    The dense targets of every window of the pool are computed once. Data-parallel: window i lives on
    rank i mod world size and the sums are reduced, so every rank gets the one-process fitness.
    """

    def __init__(self, dense: nn.Module, windows: torch.Tensor, top_k: int, batch_size: int = 8) -> None:
        self.batch_size = batch_size
        self.pool = windows.shape[0]
        self.world, self.rank = dist.world_size(), dist.rank()
        device = next(dense.parameters()).device
        self.windows = windows[self.rank::self.world].to(device)
        ids, logp = [], []
        with torch.no_grad():
            for chunk in self.windows.split(batch_size):
                i, lp = dense_topk(dense(input_ids=chunk).logits[:, :-1], top_k)
                ids.append(i)
                logp.append(lp)
        self.ids = None if not ids or ids[0] is None else torch.cat(ids)
        self.logp = torch.cat(logp) if logp else None

    @torch.no_grad()
    def __call__(self, model: nn.Module, n_windows: int | None = None, indices: Sequence[int] | None = None) -> float:
        """Fitness on the first `n_windows` of the pool, or on the pool windows `indices`."""
        chosen = range(n_windows if n_windows is not None else self.pool) if indices is None else indices
        rows = torch.tensor(sorted(i // self.world for i in chosen if i % self.world == self.rank), dtype=torch.long)
        sums = torch.zeros(2, dtype=torch.float64)  # Σ KL, tokens
        for part in rows.split(self.batch_size):
            if part.numel() == 0:  # a fresh draw may leave this rank none of its windows
                continue
            ids = None if self.ids is None else self.ids[part]
            kl = kl_terms(ids, self.logp[part], model(input_ids=self.windows[part]).logits[:, :-1])
            sums[0] += float(kl.double().sum())
            sums[1] += kl.numel()
        if dist.is_distributed():
            on = sums.to(self.windows.device)
            dist.all_reduce_sum_(on)
            sums = on.cpu()
        return float(sums[0] / sums[1])


@dataclass
class Space:
    """The searchable levels of each sub-layer and the step of each type."""

    levels: dict[SubKey, list[int]]
    steps: dict[str, int]


def _key(d: Dist) -> str:
    return json.dumps(dist_to_json(d))


def mutate(parent: Dist, space: Space, rng: random.Random, max_tries: int = 100) -> Dist | None:
    """The parent with k level switches (same type), or None if no legal switch was found."""
    child = dict(parent)
    k = min(rng.randint(1, 4), rng.randint(1, 4))
    kinds = sorted({key.kind for key in space.levels})
    done = 0
    for _ in range(max_tries):
        if done == k:
            break
        kind = rng.choice(kinds)
        keys = [key for key in space.levels if key.kind == kind]
        step = space.steps[kind]
        ups = [key for key in keys if child[key] + step in space.levels[key]]
        downs = [key for key in keys if child[key] - step in space.levels[key]]
        pairs = [(a, b) for a in ups for b in downs if a != b]
        if not pairs:
            continue
        a, b = rng.choice(pairs)
        child[a] += step
        child[b] -= step
        done += 1
    return child if done else None


def evolve(model: nn.Module, apply: Callable[[Dist], None], parent: Dist, space: Space, fitness: TopKFitness,
           cfg: SearchConfig, seed: int, cost: Callable[[Dist], float] | None = None,
           ckpt: Checkpoint | None = None, progress: bool = False) -> tuple[Dist, list[dict]]:
    """Run the search from `parent`; return the best distribution and a per-generation history."""
    rng = random.Random(seed)
    history: list[dict] = []
    start = 0
    final_n = cfg.stage_windows[-1]
    if ckpt is not None and ckpt.resuming:
        st = ckpt.state()
        parent, start, history = dist_from_json(st["parent"]), st["done"] + 1, st["history"]
        rng.setstate((st["rng"][0], tuple(st["rng"][1]), st["rng"][2]))
    pool = fitness.pool

    def draw(n: int) -> dict:  # the windows of one selection stage (the same on every rank)
        return {"indices": sorted(rng.sample(range(pool), n))} if cfg.resample else {"n_windows": n}

    apply(parent)
    parent_fit = fitness(model, final_n)
    if not history:
        history.append({"generation": 0, "fitness": parent_fit, "seconds": 0.0, "evaluated": 1})
    for gen in tqdm(range(start, cfg.generations), desc="search", disable=not progress, leave=False):
        t0 = time.time()
        seen = {_key(parent)}
        children: list[Dist] = []
        tries = 0
        while len(children) < cfg.offspring and tries < 20 * cfg.offspring:
            tries += 1
            child = mutate(parent, space, rng)
            if child is not None and _key(child) not in seen:
                seen.add(_key(child))
                children.append(child)
        if cost is not None and cfg.prescreen < 1.0 and children:
            children = sorted(children, key=cost)[:max(1, math.ceil(cfg.prescreen * len(children)))]
        evaluated = 0
        pool_left = children
        for stage, n_windows in enumerate(cfg.stage_windows[:-1]):
            windows = draw(n_windows)
            scored = []
            for child in pool_left:
                apply(child)
                scored.append((fitness(model, **windows), _key(child), child))
                evaluated += 1
            scored.sort(key=lambda t: (t[0], t[1]))
            pool_left = [c for _, _, c in scored[: cfg.survivors[stage]]]
        final = draw(final_n)
        if cfg.resample:  # the parent is judged on the same fresh windows as the finalists
            apply(parent)
            parent_fit = fitness(model, **final)
            evaluated += 1
        best, best_fit = parent, parent_fit
        for child in pool_left:
            apply(child)
            f = fitness(model, **final)
            evaluated += 1
            if f < best_fit:
                best, best_fit = child, f
        parent, parent_fit = best, best_fit
        history.append({"generation": gen + 1, "fitness": parent_fit, "seconds": time.time() - t0,
                        "evaluated": evaluated})
        if ckpt is not None:  # every rank holds the same state
            state = rng.getstate()
            ckpt.commit(gen, state={"parent": dist_to_json(parent), "history": history,
                                    "rng": [state[0], list(state[1]), state[2]]})
    apply(parent)
    return parent, history
