"""Where a model comes from: a local folder, a reference name (built here and cached), or a Hub id
`org/name[@revision]` resolved through the Hugging Face cache as transformers does it."""
from __future__ import annotations

import os
from pathlib import Path

from surgery.errors import SurgeryError, require
from surgery.models.catalog import is_hub_id, resolve_hub
from surgery.reference.specs import REFERENCES


def resolve_model(source: str, data_dir: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """A local folder for a model source (a reference model is built now if it is not cached)."""
    require(isinstance(source, str) and source != "", "no model given")
    if Path(source).exists():
        return Path(source)
    if source in REFERENCES:
        from surgery.reference.builder import build

        return build(source, data_dir, progress=progress)
    if is_hub_id(source):
        return resolve_hub(source)
    raise SurgeryError(f"model folder not found: {source} (not a reference model either: "
                       f"{', '.join(REFERENCES)}; a Hub id is org/name[@revision])")
