"""A peer's code taken from a local clone of its repository (no network at run time), imported from
a temporary copy and forgotten again afterwards."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path


def copy_from_clone(repo: Path, into: Path, sub: str = "") -> str:
    """Copy `sub` (default: everything) of a clone — work tree or bare git directory — into `into`;
    return its commit."""
    git = ["git", "-C", str(repo)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    if (repo / ".git").exists() or (sub and (repo / sub).is_dir()):
        shutil.copytree(repo / sub if sub else repo, into / sub if sub else into, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git"))
    else:
        archive = subprocess.run([*git, "archive", "HEAD", *([sub] if sub else [])], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


@contextlib.contextmanager
def on_path(folder: str):
    """`folder` first on sys.path; afterwards every module imported from it is dropped (peers use
    top-level names such as `utils` or `src` that would shadow others)."""
    before = set(sys.modules)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)
        for name in set(sys.modules) - before:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(folder):
                del sys.modules[name]


@contextlib.contextmanager
def temporary_copy(repo: str | Path, url: str, sub: str = ""):
    """A temporary copy of a local clone of `url` (deleted afterwards); yields (folder, commit)."""
    import tempfile

    repo = Path(repo)
    if not repo.exists():
        raise SystemExit(f"no clone at {repo} (git clone {url})")
    with tempfile.TemporaryDirectory(prefix="peer-") as tmp:
        yield Path(tmp), copy_from_clone(repo, Path(tmp), sub)
