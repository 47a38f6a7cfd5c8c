"""Atomic file and folder writes, and safetensors reading with clear errors.

Nothing `surgery` writes is ever left half-written: files go to a temporary sibling and are
renamed into place; folders are built in a temporary sibling folder and renamed at the end.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from typing import TYPE_CHECKING

from surgery.errors import SurgeryError

if TYPE_CHECKING:
    import torch

MARKER = "surgery_output.json"  # written into every output folder: what made it
# Files that report on a model but are not part of it (not counted in the shipped size).
REPORTS = frozenset({"metrics.json", "versions.json", "recipe.yaml", "README.md", "comparison.md", "comparison.json",
                     "comparison.png", "mask.safetensors", "forget_split.npz", "forget_split.json", MARKER,
                     "surgery_quant.json", "saliency.safetensors", "samples.png"})


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: Path) -> None:
    """Remove temporary siblings of `target` left by processes that no longer run (kill -9)."""
    prefix = _tmp_prefix(target)
    if not target.parent.is_dir():
        return
    for p in target.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        try:
            pid = int(p.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _enospc(e: Exception, target: Path) -> SurgeryError | None:
    import errno

    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e):
        return SurgeryError(f"no space left on the device while writing {target}; nothing was kept")
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    if target.is_dir():
        raise SurgeryError(f"output is a folder, not a file: {target}")
    if target.exists() and not overwrite:
        raise SurgeryError(f"output file exists: {target} (pass --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(target)}{os.getpid()}-", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except Exception as e:  # OSError, SafetensorError: a full disk is one line
        raise (_enospc(e, target) or e) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; move it onto `path` only if the block succeeds.

    An existing `path` is refused unless `overwrite`; with `overwrite` it is replaced only after
    the new folder is complete (which folders may be replaced is the caller's rule). A full disk
    is one line and leaves nothing behind.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise SurgeryError(f"output exists and is not a folder: {target}")
    if target.exists() and not overwrite:
        raise SurgeryError(f"output folder exists: {target} (pass --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(target)}{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f"{_tmp_prefix(target)}{os.getpid()}-old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except Exception as e:  # OSError, SafetensorError: a full disk is one line
        raise (_enospc(e, target) or e) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_tensors(
    tensors: dict[str, "torch.Tensor"], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (tensors made contiguous, on CPU)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
    """Read every tensor and the header metadata of a safetensors file, or fail in one line."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise SurgeryError(f"file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SurgeryError(f"corrupt or truncated safetensors file {p}: {e}") from None
    return tensors, meta


def finite(obj: object) -> object:
    """`obj` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps_json(obj: object) -> str:
    """Strict JSON (never a bare NaN), indented, keys in insertion order."""
    return json.dumps(finite(obj), indent=2, default=str, allow_nan=False) + "\n"


def write_json(obj: object, path: str | os.PathLike) -> None:
    """Write strict JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_json(obj))


def is_surgery_output(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MARKER).is_file()


def check_output_folder(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an output folder that would destroy what is not ours, before any work starts.

    Not `.`, the current folder or one of its parents; not an existing file; an existing folder
    only with `overwrite` and only if it holds a previous surgery output; a writable parent.
    """
    raw = Path(path)
    out = raw.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents or raw.name in ("", ".", ".."):
        raise SurgeryError(f"output {path!s} names the current folder or one of its parents; name a new folder")
    if out.exists() and not out.is_dir():
        raise SurgeryError(f"output {path} exists and is a file; name a new folder")
    if out.exists():
        if not overwrite:
            raise SurgeryError(f"output folder exists: {path} (pass --overwrite to replace it)")
        if any(out.iterdir()) and not is_surgery_output(out):
            raise SurgeryError(f"output folder {path} exists and was not written by surgery (no {MARKER}); "
                               "refusing to replace it, even with --overwrite")
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not (probe.is_dir() and os.access(probe, os.W_OK)):
        raise SurgeryError(f"output folder is not writable: {out.parent}")
    return out


def check_output_file(out: str | os.PathLike, inputs: list, overwrite: bool) -> None:
    """An output file that is not an input, not a folder, and new unless `overwrite`."""
    p = Path(out)
    for i in inputs:
        if i and Path(i).exists() and p.exists() and p.resolve() == Path(i).resolve():
            raise SurgeryError(f"--out {out} is also an input; write to another file")
    if p.is_dir():
        raise SurgeryError(f"--out {out} is a folder; give a file name")
    if p.exists() and not overwrite:
        raise SurgeryError(f"--out {out} exists (pass --overwrite to replace it)")
