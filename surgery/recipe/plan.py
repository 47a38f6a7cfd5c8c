"""Everything `surgery run` checks before any model loads: the recipe, the output folder, every
stage's data, and the model's config against what the stages ask of it (light: no torch)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgery.errors import require
from surgery.io import check_output_folder
from surgery.models.catalog import check_model_type, read_config, weight_files
from surgery.recipe.schema import Recipe, check_device, check_dtype, parse
from surgery.reference.resolve import resolve_model


@dataclass
class Plan:
    recipe: Recipe
    out: Path
    source: str  # what the user named (--model or the recipe's)
    base_path: Path  # its local folder
    config: dict[str, Any]


def prepare(recipe_path: str, output: str, model: str | None = None, overrides: list[str] | None = None,
            overwrite: bool = False, data_dir: str | os.PathLike | None = None, progress: bool = False,
            device: str | None = None, dtype: str | None = None) -> Plan:
    """`device` / `dtype` (the command line's) override the recipe's."""
    recipe = parse(recipe_path, overrides)
    if device is not None:
        recipe.device = check_device(device)
    if dtype is not None:
        recipe.dtype = check_dtype(dtype)
    out = check_output_folder(output, overwrite)
    source = model or recipe.model
    require(source is not None, "no model: pass --model or set `model:` in the recipe")
    recipe.check_inputs(data_dir)
    base_path = resolve_model(source, data_dir, progress=progress)
    config = read_config(base_path)
    check_model_type(config, base_path)
    weight_files(base_path)
    recipe.check_model(config)
    return Plan(recipe, out, source, base_path, config)
