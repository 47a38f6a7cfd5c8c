"""Build reference models once, cache them by spec hash, and load them back.

Cache: `$SURGERY_CACHE_DIR/reference/<name>-<hash>/` (default `~/.cache/surgery`). A build writes
into a temporary folder and renames it at the end; an LM build also checkpoints every 100 steps
in `.<name>-<hash>.partial/`, so a killed build resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from surgery import dist
from surgery.io import atomic_dir
from surgery.models.io import load_model, write_model
from surgery.reference.specs import DiffusionSpec, LMSpec, get_spec, spec_hash

CACHE_ENV = "SURGERY_CACHE_DIR"
INFO = "reference.json"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "surgery")


def reference_path(name: str, **overrides: Any) -> Path:
    spec = get_spec(name, **overrides)
    return cache_root() / "reference" / f"{name}-{spec_hash(spec)}"


def build(name: str, data_dir: str | os.PathLike | None = None, force: bool = False,
          progress: bool = True, **overrides: Any) -> Path:
    """Path of the built reference model `name` (built now unless cached). Rank 0 builds."""
    spec = get_spec(name, **overrides)
    target = reference_path(name, **overrides)
    if (target / INFO).exists() and not force:
        return target
    if dist.is_main():
        work = target.with_name(f".{target.name}.partial")
        torch.set_num_threads(max(1, torch.get_num_threads()))
        with atomic_dir(target, overwrite=True) as tmp:
            if isinstance(spec, LMSpec):
                from surgery.reference.train_lm import train_lm

                model, tokenizer, info = train_lm(spec, data_dir, work, progress)
                model.save_pretrained(str(tmp))
                tokenizer.save_pretrained(str(tmp))
            elif isinstance(spec, DiffusionSpec):
                from surgery.diffusion.model import write_diffusion
                from surgery.reference.train_diffusion import train_diffusion

                model, info = train_diffusion(spec, data_dir, progress)
                write_diffusion(model, tmp)
            else:
                from surgery.reference.train_vision import train_vision

                model, info = train_vision(spec, data_dir, progress)
                write_model(model, tmp)
            info = {"name": name, "hash": spec_hash(spec), "spec": asdict(spec), **info}
            (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(work, ignore_errors=True)
    dist.barrier()
    return target


def info(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / INFO).read_text())


def load_reference(name: str, data_dir: str | os.PathLike | None = None, progress: bool = True,
                   **overrides: Any) -> tuple[torch.nn.Module, Any, Path]:
    """(model, tokenizer or None, folder) of a reference model, building it if needed."""
    path = build(name, data_dir, progress=progress, **overrides)
    model, tokenizer = load_model(path)
    model.eval()
    return model, tokenizer, path

