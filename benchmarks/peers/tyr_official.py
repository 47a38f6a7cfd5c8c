"""Týr-the-Pruner's own code (AMD-AGI/Tyr-the-Pruner) on our model, calibration and budget.

No network at run time: the code comes from a local clone (`git clone
https://github.com/AMD-AGI/Tyr-the-Pruner`, work tree or bare git directory), copied into a temporary
folder deleted afterwards; nothing of it is kept in this repository. Its two programs run as its
`script/example.sh` chains them, each through its own `main()`: `prune_to_supernet.py` (per layer,
o_proj and down_proj pruned by input groups — query heads, FFN neurons — to a ladder of sparsity
levels with its OBS-style local solver; iterations 2+ re-centre the ladder on the previous search's
result with half the level spacing) and `search_sparsity_dist.py` (its evolutionary search over the
levels: level-swapping mutations within one module type, multi-stage selection on top-k sparse KL,
elitist). Its final configuration is then composed into a fresh copy of the model (each o_proj /
down_proj replaced by its chosen level) and evaluated by our code.

What had to change for it to run here (edits to its files in the temporary copy, listed in
`PATCHES`; all else is configuration through its own command-line flags):
- CPU: `device = "cuda:{rank}"` / `"cuda"` become `"cpu"`; its process group uses gloo instead of
  NCCL (one process, RANK 0 of 1, a free local port).
- Our data: its `get_data` (which downloads fineweb-edu / WikiText-2 / C4 from the Hub) is replaced in
  its modules' namespaces by a function returning our windows (the same calibration / fitness windows
  our search uses, split into [1, L] rows as it expects); its tokenizer load is skipped (the tokenizer
  is used only by `get_data`).
- Its search loads the model with `device_map=None` (its own `--memory_efficient` flag), not "auto".
"""
from __future__ import annotations

import contextlib
import importlib
import os
import socket
import sys
import time
import types
from pathlib import Path

import torch

from peers._clone import on_path, temporary_copy

PATCHES = {
    "prune_to_supernet.py": [('backend="nccl"', 'backend="gloo"'), ('device = f"cuda:{rank}"', 'device = "cpu"')],
    "search_sparsity_dist.py": [('device = f"cuda"', 'device = "cpu"')],
}


def _patch(into: Path, commit: str) -> None:
    for name, edits in PATCHES.items():
        path = into / name
        text = path.read_text()
        for old, new in edits:
            if old not in text:
                raise SystemExit(f"Týr code at {commit[:7]}: {name} no longer contains {old!r}; update PATCHES")
            text = text.replace(old, new)
        path.write_text(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tyr_code(repo: str | Path):
    """Its two programs imported from a patched temporary copy; yields (modules, commit, folder)."""
    with temporary_copy(repo, "https://github.com/AMD-AGI/Tyr-the-Pruner") as (tmp, commit):
        _patch(tmp, commit)
        with on_path(str(tmp)):
            mods = types.SimpleNamespace(supernet=importlib.import_module("prune_to_supernet"),
                                         search=importlib.import_module("search_sparsity_dist"))
            yield mods, commit, Path(tmp)


def _run_main(module, argv: list[str], data: dict[str, list[torch.Tensor]]) -> None:
    """Its `main()` with `argv`, our windows for every data set name it asks for."""
    def get_data(name, num_tokens, sequence_length, tokenizer, train=True):
        return data[name]

    no_tokenizer = types.SimpleNamespace(from_pretrained=lambda *a, **k: None)
    saved = {k: getattr(module, k) for k in ("get_data", "AutoTokenizer")}
    module.get_data, module.AutoTokenizer = get_data, no_tokenizer
    old_argv = sys.argv
    sys.argv = [module.__name__, *argv]
    try:
        module.main()
    finally:
        sys.argv = old_argv
        for k, v in saved.items():
            setattr(module, k, v)


def _rows(windows: torch.Tensor) -> list[torch.Tensor]:
    return [w.view(1, -1).clone() for w in windows]


def run_tyr(model_path: str | Path, repo: str | Path, sparsity: float, calib: torch.Tensor, fitness: torch.Tensor,
            evalset: torch.Tensor, iterations: int = 4, generations: int = 12, offspring: int = 16,
            stage_tokens: tuple[int, ...] = (512, 2048, 8192), survivors: tuple[int, ...] = (4, 2, 1),
            kl_topk: int = 256, levels: int = 9, diff_share: float = 0.125, seed: int = 0) -> dict:
    """Supernet + search, `iterations` times as its example script chains them. Level spacing starts at
    `diff_share` of each o_proj / down_proj (its example: 12.5 % on Llama-2-7B) and halves each
    iteration (its own floors: one head, 32 neurons). Returns {layer name: weight} of the final
    configuration, the levels chosen, per-iteration wall times and the commit."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_path))
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    diff_mha = int(diff_share * cfg.hidden_size * cfg.num_attention_heads * head)
    diff_mlp = int(diff_share * cfg.hidden_size * cfg.intermediate_size)
    data = {"calib": _rows(calib), "fitness": _rows(fitness), "eval": _rows(evalset)}
    seqlen = calib.shape[1]
    times, prev = [], None
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with tyr_code(repo) as (mods, commit, tmp):
            for it in range(1, iterations + 1):
                out = tmp / f"supernet-{it}"
                t0 = time.perf_counter()
                _run_main(mods.supernet, [
                    "--model_name_or_path", str(model_path), "--prunable_modules", r"^(?!.*(?:embedding|emb|head)).+$",
                    "--pre_block_modules", "model.embed_tokens", "model.rotary_emb", "--block_modules", "model.layers",
                    "--calibration_data", "calib", "--calibration_sequence_length", str(seqlen),
                    "--calibration_tokens", str(calib.numel()), "--dtype", "float32", "--sparsity", str(sparsity),
                    "--error_accumulation", "--supernet_dir", str(prev[0]) if prev else "None",
                    "--supernet_config", str(prev[1]) if prev else "None", "--weights_diff_mlp", str(diff_mlp),
                    "--weights_diff_mha", str(diff_mha), "--save_dir", str(out), "--num_sparsity_levels", str(levels),
                    "--seed", str(seed)], data)
                torch.distributed.destroy_process_group()
                t1 = time.perf_counter()
                _run_main(mods.search, [
                    "--model_name_or_path", str(model_path), "--calibration_data", "fitness",
                    "--calibration_tokens", str(fitness.numel()), "--calibration_sequence_length", str(seqlen),
                    "--eval_datasets", "eval", "--eval_every", str(10 ** 9), "--eval_sequence_length", str(seqlen),
                    "--fitness_fn", "sparse_kl", "--kl_topk", str(kl_topk), "--dtype", "float32",
                    "--offspring", str(offspring), "--generations", str(generations),
                    "--tokens_per_selection", *map(str, stage_tokens),
                    "--survivors_per_selection", *map(str, survivors), "--sparse_weights_path", str(out),
                    "--configuration_name", "config.txt", "--json_log_name", str(tmp / f"search-{it}.json"),
                    "--memory_efficient", "--seed", str(seed)], data)
                times.append({"iteration": it, "supernet_s": t1 - t0, "search_s": time.perf_counter() - t1,
                              "diff_mha": diff_mha, "diff_mlp": diff_mlp})
                prev = (out, out / "config.txt")
                diff_mha, diff_mlp = diff_mha // 2, diff_mlp // 2
            chosen = {}
            for line in prev[1].read_text().splitlines():
                name, level = (s.strip() for s in line.split(":"))
                chosen[name] = int(level)
            weights = {name: torch.load(prev[0] / name / f"{level}.pth") for name, level in chosen.items()}
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"weights": weights, "levels": chosen, "iterations": times, "commit": commit}


def compose(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load its chosen o_proj / down_proj weights into `model` in place."""
    for name, w in weights.items():
        layer = model.get_submodule(name)
        if layer.weight.shape != w.shape:
            raise SystemExit(f"Týr weight {name} has shape {tuple(w.shape)}, the model {tuple(layer.weight.shape)}")
        layer.weight.data = w.to(layer.weight.dtype)


def physical_block_params(model: torch.nn.Module) -> dict:
    """Decoder-block linear weights left once the zero input groups of o_proj (query heads) and
    down_proj (neurons) are sliced away: a KV head goes only with all its query heads."""
    cfg = model.config
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    total, heads, kv_heads, neurons = 0, [], [], []
    for layer in model.model.layers:
        att, mlp = layer.self_attn, layer.mlp
        alive = att.o_proj.weight.detach().view(att.o_proj.out_features, -1, head).abs().sum((0, 2)) > 0
        kv = alive.view(-1, group).any(1)
        q, k = int(alive.sum()), int(kv.sum())
        d = att.o_proj.out_features
        n = int((mlp.down_proj.weight.detach().abs().sum(0) > 0).sum())
        total += 2 * q * head * d + 2 * k * head * d + 3 * n * d
        heads.append(q)
        kv_heads.append(k)
        neurons.append(n)
    return {"block_params": total, "query_heads": heads, "kv_heads": kv_heads, "neurons": neurons}


__all__ = ["PATCHES", "compose", "physical_block_params", "run_tyr", "tyr_code"]
