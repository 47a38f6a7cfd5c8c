"""Train a reference Llama LM (GQA) and its BPE vocabulary on our own text, seeded and resumable."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from surgery.data import text as textdata
from surgery.data.windows import eval_windows, tokenize
from surgery.errors import SurgeryError, require
from surgery.evaluate.lm import perplexity
from surgery.io import atomic_path, load_tensors, save_tensors
from surgery.models.tokenizer import train_bpe
from surgery.reference.specs import LMSpec
from surgery.saliency.losses import causal_lm_loss


def corpus(spec: LMSpec, root: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """Works by split; `excluded` holds the training works this spec leaves out."""
    splits = textdata.embedded() if spec.corpus == "embedded" else textdata.shakespeare(root)
    for w in spec.exclude_works:
        require(w in splits["train"], f"cannot exclude {w!r}: not a training work of {spec.corpus}")
    splits["excluded"] = {w: splits["train"][w] for w in spec.exclude_works}
    splits["train"] = {n: t for n, t in splits["train"].items() if n not in spec.exclude_works}
    return splits


def llama_config(spec: LMSpec, tokenizer: Any) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=max(512, 2 * spec.seqlen),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _optimizer(model: torch.nn.Module, spec: LMSpec) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(0.9, 0.95),
    )


def _lr(step: int, spec: LMSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    frac = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


CKPT = "train_state.json"


def save_training_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                        gen: torch.Generator, step: int, elapsed: float) -> None:
    """Model, optimizer and sampler state as safetensors + JSON (never a pickle), JSON last."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = opt.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, st in sd["state"].items():
        tensors.update({f"opt.{idx}.{k}": v for k, v in st.items()})
    tensors["gen"] = gen.get_state()
    save_tensors(tensors, folder / "train_state.safetensors")
    with atomic_path(folder / CKPT) as tmp:
        tmp.write_text(json.dumps({"step": step, "elapsed": elapsed, "param_groups": sd["param_groups"]}))


def load_training_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                        gen: torch.Generator) -> tuple[int, float]:
    """Restore what `save_training_state` wrote; return (step, elapsed seconds)."""
    meta = json.loads((folder / CKPT).read_text())
    tensors, _ = load_tensors(folder / "train_state.safetensors")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["gen"])
    return int(meta["step"]), float(meta["elapsed"])


def train_lm(spec: LMSpec, root: str | os.PathLike | None, workdir: Path, progress: bool = True,
             evaluate: bool = True) -> tuple[LlamaForCausalLM, Any, dict[str, Any]]:
    """Train from scratch (or resume from `workdir`); return model, tokenizer, quality."""
    t0 = time.time()
    splits = corpus(spec, root)
    torch.manual_seed(spec.seed)
    # The vocabulary sees the excluded works too, so a model retrained without a work shares the
    # original's tokenizer and their perplexities compare token for token.
    vocab_texts = {**splits["train"], **splits["excluded"]}  # sorted by work: the same order either way
    tokenizer = train_bpe([vocab_texts[k] for k in sorted(vocab_texts)], spec.vocab_size)
    ids = tokenize(tokenizer, textdata.join(splits["train"]))
    model = LlamaForCausalLM(llama_config(spec, tokenizer))
    opt = _optimizer(model, spec)
    gen = torch.Generator().manual_seed(spec.seed)
    start, elapsed_before = 0, 0.0
    if (workdir / CKPT).exists():  # resume a killed build of the same spec (the folder is keyed by its hash)
        start, elapsed_before = load_training_state(workdir, model, opt, gen)
    model.train()
    bar = tqdm(range(start, spec.steps), desc="train-lm", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, spec)
        starts = torch.randint(0, ids.numel() - spec.seqlen - 1, (spec.batch_size,), generator=gen)
        batch = torch.stack([ids[s : s + spec.seqlen] for s in starts.tolist()])
        loss = causal_lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 100 == 0 and step + 1 < spec.steps:
            save_training_state(workdir, model, opt, gen, step + 1, elapsed_before + time.time() - t0)
    model.eval()
    train_seconds = elapsed_before + time.time() - t0
    quality = lm_quality(model, tokenizer, splits, spec.seqlen, root,
                         wikitext=spec.corpus == "shakespeare") if evaluate else {}
    info = {"train_tokens": ids.numel(), "train_works": sorted(splits["train"]),
            "heldout": {k: sorted(v) for k, v in splits.items() if k not in ("train",)},
            "build_seconds": round(train_seconds, 1), "quality": quality}
    return model, tokenizer, info


def lm_quality(model: torch.nn.Module, tokenizer: Any, splits: dict[str, dict[str, str]],
               seqlen: int, root: str | os.PathLike | None, wikitext: bool = True) -> dict[str, float]:
    """Perplexity (GPTQ protocol, windows of `seqlen`) on every held-out split and, with
    `wikitext`, on WikiText-2 test (when the data folder is there)."""
    out = {}
    for name, works in splits.items():
        if name == "train" or not works:
            continue
        out[f"ppl_{name}"] = perplexity(model, eval_windows(tokenize(tokenizer, textdata.join(works)), seqlen))
    if not wikitext:
        return out
    try:
        wiki = textdata.wikitext2_test(root)
    except SurgeryError:  # no data folder
        return out
    out["ppl_wikitext2"] = perplexity(model, eval_windows(tokenize(tokenizer, wiki), seqlen))
    return out
