"""Token windows: GPTQ-protocol evaluation windows and seeded calibration windows."""
from __future__ import annotations

import random
from typing import Any

import torch

from surgery.errors import require


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """All token ids of `text` as one 1-D LongTensor (no padding, no truncation)."""
    require(len(text) > 0, "empty text: nothing to tokenize")
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def check_vocab(ids: torch.Tensor, vocab_size: int, what: str = "the text") -> None:
    """Refuse token ids the model has no embedding for (a tokenizer of another model)."""
    top = int(ids.max()) if ids.numel() else -1
    require(top < vocab_size, f"the tokenizer gives {what} token id {top}, but the model's vocabulary has "
            f"{vocab_size} entries (a tokenizer of another model?)")


def eval_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows `[n, seqlen]`, n = numel // seqlen (the remainder is dropped)."""
    require(seqlen > 1, f"seqlen must be > 1, got {seqlen}")
    n = ids.numel() // seqlen
    require(n > 0, f"text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].view(n, seqlen)


def calib_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens (GPTQ's sampler: Python `random`, `seed`)."""
    require(nsamples > 0, f"nsamples must be > 0, got {nsamples}")
    require(ids.numel() > seqlen + 1, f"text has {ids.numel()} tokens, too few for windows of {seqlen}")
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def mixed_calib_windows(id_lists: list[torch.Tensor], nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """`nsamples` random windows drawn evenly from several texts (the first ones take the remainder),
    interleaved by a seeded shuffle so every batch mixes them; one text is `calib_windows` exactly."""
    require(len(id_lists) > 0, "no calibration text")
    if len(id_lists) == 1:
        return calib_windows(id_lists[0], nsamples, seqlen, seed)
    m = len(id_lists)
    counts = [nsamples // m + (1 if i < nsamples % m else 0) for i in range(m)]
    parts = [calib_windows(ids, n, seqlen, seed + 1000 * i) for i, (ids, n) in enumerate(zip(id_lists, counts)) if n]
    out = torch.cat(parts)
    order = list(range(out.shape[0]))
    random.Random(seed).shuffle(order)
    return out[order]


def batches(windows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split `[n, T]` windows into batches of at most `batch_size` rows."""
    require(batch_size > 0, f"batch size must be > 0, got {batch_size}")
    return list(windows.split(batch_size))
