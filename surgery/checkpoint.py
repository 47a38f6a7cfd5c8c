"""The one resume protocol of every long stage (quantization blocks, supernet blocks, search
generations): a folder with `state.json` (fingerprint, last committed step, world size), one file
per committed step, and one inputs file per rank.

A fingerprint covers what makes a checkpoint valid: the package version, the model (config and a
digest of its weights), the calibration windows and the stage's configuration. A folder whose
fingerprint differs was made for another model, other data or another configuration: it is cleared
and the stage restarts, with one line saying so. Commits are atomic: step files first, `state.json`
last, under a barrier so that every rank has written its inputs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery import dist
from surgery._version import __version__
from surgery.errors import require
from surgery.io import atomic_path, load_tensors, save_tensors
from surgery.log import note

_SAMPLE = 1 << 20  # elements digested per tensor at most (a strided sample beyond that)


def tensor_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, shapes, dtypes and values (a strided sample of at most 2^20 values of
    very large tensors: enough to tell two models apart, cheap enough for 70B weights)."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.reshape(-1)
        if flat.numel() > _SAMPLE:
            flat = flat[:: -(-flat.numel() // _SAMPLE)]
        data = flat.to("cpu").contiguous()
        if data.dtype in (torch.bfloat16, torch.float16):
            data = data.view(torch.int16)
        h.update(data.numpy().tobytes())
    return h.hexdigest()


_VOLATILE = ("_name_or_path", "transformers_version", "_commit_hash", "dtype", "torch_dtype", "auto_map")


def config_digest(model: nn.Module) -> str:
    """sha256 of the model's config (what defines the architecture; not where it was loaded from, nor
    the transformers version), or of a surgery vision model's spec."""
    cfg = getattr(model, "config", None)
    data = {k: v for k, v in cfg.to_dict().items() if k not in _VOLATILE} if hasattr(cfg, "to_dict") else \
        getattr(model, "surgery_config", type(model).__name__)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def model_digest(model: nn.Module) -> str:
    """The model's identity: its config and a digest of its weights."""
    return hashlib.sha256((config_digest(model) + tensor_digest(model.state_dict().items())).encode()).hexdigest()


def fingerprint(model: nn.Module | None = None, windows: torch.Tensor | list[torch.Tensor] | None = None,
                config: Any = None, **extra: Any) -> str:
    """16 hex digits naming a stage's inputs: package version, model, calibration windows, config."""
    parts: dict[str, Any] = {"version": __version__, "extra": extra}
    if model is not None:
        parts["model"] = model_digest(model)
    if windows is not None:
        ws = [windows] if isinstance(windows, torch.Tensor) else list(windows)
        parts["windows"] = tensor_digest((str(i), w) for i, w in enumerate(ws))
    if config is not None:
        parts["config"] = config
    text = json.dumps(parts, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


class Checkpoint:
    """Resume state of one stage in `folder` (see the module docstring)."""

    def __init__(self, folder: str | Path, fingerprint: str, what: str = "stage") -> None:
        self.dir = Path(folder)
        self.fingerprint = fingerprint
        self.what = what
        self.done = -1
        state = self._read_state()
        if state is None:
            return
        if state.get("fingerprint") != fingerprint:
            note(f"{self.dir} holds a {what} checkpoint of another model, data or configuration; "
                 f"restarting the {what}")
            dist.barrier()
            if dist.is_main():
                shutil.rmtree(self.dir, ignore_errors=True)
            dist.barrier()
            return
        require(state.get("world", 1) == dist.world_size(),
                f"{self.dir} was written by {state.get('world', 1)} processes; resume it with as many "
                "(or restart with --overwrite)")
        self.done = int(state["done"])
        if self.done >= 0:
            note(f"resuming the {what} after step {self.done + 1} from {self.dir}")

    def _read_state(self) -> dict[str, Any] | None:
        path = self.dir / "state.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            return {}  # unreadable: treated as another configuration

    @property
    def resuming(self) -> bool:
        return self.done >= 0

    def commit(self, step: int, tensors: Mapping[str, torch.Tensor] | None = None,
               meta: Mapping[str, str] | None = None, inputs: Mapping[str, torch.Tensor] | None = None,
               state: Mapping[str, Any] | None = None) -> None:
        """Record step `step` as finished: its tensors (rank 0), this rank's inputs, then state.json."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if inputs is not None:
            save_tensors(dict(inputs), self.dir / dist.per_rank_name("inputs"))
        dist.barrier()
        if dist.is_main():
            if tensors is not None:
                save_tensors(dict(tensors), self.dir / f"step_{step}.safetensors", dict(meta or {}))
            with atomic_path(self.dir / "state.json") as tmp:  # written last: the commit point
                tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "done": step,
                                           "world": dist.world_size(), **(state or {})}))
        dist.barrier()
        self.done = step

    def state(self) -> dict[str, Any]:
        """The extra state committed with the last step."""
        return self._read_state() or {}

    def step(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return load_tensors(self.dir / f"step_{step}.safetensors")

    def inputs(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.dir / dist.per_rank_name("inputs"))[0]
