"""What every output folder carries besides the model: card, metrics, versions, resolved recipe."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "safetensors", "compressed-tensors", "surgery")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        out["surgery_git"] = sha.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["surgery_git"] = None
    return out


def model_card(base_model: str, relation: str, tags: list[str], method: str, data: str,
               table: str, recipe_text: str) -> str:
    front = {"base_model": base_model, "base_model_relation": relation, "library_name": "transformers",
             "tags": ["surgery", *tags]}
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {Path(base_model).name} — {method}\n\n"
            f"Made with `surgery run`. Data: {data}.\n\n## Before vs after\n\n{table}\n\n"
            f"## Recipe\n\n```yaml\n{recipe_text}```\n")


def dump_recipe(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False)
