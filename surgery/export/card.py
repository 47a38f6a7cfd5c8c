"""Model cards: what the folder holds, how to load it (the exact lines, tested in a fresh process),
what was done, on which data, and the before-vs-after table."""
from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from surgery.export.folders import has_adapter
from surgery.models.catalog import is_diffusion_config

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "safetensors", "compressed-tensors", "peft",
            "diffusers", "surgery")


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


def loading_code(folder: Path) -> str:
    """Python that loads the folder as it is meant to be used (`path` = the folder)."""
    cfg = json.loads((folder / "config.json").read_text())
    if is_diffusion_config(cfg):
        return ("from diffusers import DDPMScheduler, UNet2DModel\nmodel = UNet2DModel.from_pretrained(path)\n"
                "scheduler = DDPMScheduler.from_pretrained(path)  # class labels: 0..n-1, n = unconditional\n")
    if "surgery_arch" in cfg:
        return "from surgery.models import load_model\nmodel, _ = load_model(path)\n"
    # AutoTokenizer reads config.json too: without the flag a folder with its own modeling file
    # stops at transformers' interactive trust_remote_code prompt
    remote = ", trust_remote_code=True" if "auto_map" in cfg else ""
    lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
             f"model = AutoModelForCausalLM.from_pretrained(path{remote})"]
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        lines.append(f"tokenizer = AutoTokenizer.from_pretrained(path{remote})")
    if has_adapter(folder):
        lines += ["from peft import PeftModel",
                  'model = PeftModel.from_pretrained(model, path + "/adapter")  # part of the model: see below']
    return "\n".join(lines) + "\n"


def _notes(folder: Path, quant: dict[str, Any] | None) -> list[str]:
    notes = []
    code = next(iter(json.loads((folder / "config.json").read_text()).get("auto_map", {}).values()), None)
    if code:
        notes.append(f"The architecture is in `{code.split('.')[0]}.py` beside the weights (per-layer widths after "
                     "structured pruning, or one module per MoE expert): it imports only torch and transformers, hence "
                     "`trust_remote_code=True`; after `import surgery` the folder also loads without it.")
    if quant:
        notes.append(f"Weights: compressed-tensors `pack-quantized`, {quant['scheme']} for "
                     f"{quant['packed_layers']} layers (decompressed on load by transformers; vLLM serves it as is).")
        if quant["dequantized_layers"]:
            notes.append(f"{len(quant['dequantized_layers'])} layers were quantized "
                         f"{' / '.join(quant['dequantized_schemes'])} (their width is not a multiple of the group "
                         "size) and are stored as their dequantized on-grid weights: transformers 5.24 applies one "
                         "scheme to every layer of a checkpoint.")
    if has_adapter(folder):
        cfg = json.loads((folder / "adapter" / "adapter_config.json").read_text())
        notes.append(f"**The LoRA adapter in `adapter/` is part of this model** (ApiQ trains it jointly with the "
                     f"quantization grid; rank {cfg['r']}, alpha {cfg['lora_alpha']}). Without it the model is "
                     "much worse (see the table). vLLM: `LLM(model=path, enable_lora=True, "
                     f"max_lora_rank={cfg['r']})` and `LoRARequest(\"apiq\", 1, path + \"/adapter\")`.")
    return notes


def model_card(folder: Path, base_model: str, relation: str, tags: list[str], method: str, data: str,
               table: str, recipe_text: str | None = None, quant: dict[str, Any] | None = None,
               name: str | None = None) -> str:
    """The card of the model in `folder` (`name`: how the user calls the folder)."""
    diffusers = is_diffusion_config(json.loads((folder / "config.json").read_text()))
    front = {"base_model": base_model, "base_model_relation": relation,
             "library_name": "diffusers" if diffusers else "transformers", "tags": ["surgery", *tags]}
    notes = "".join(f"- {n}\n" for n in _notes(folder, quant))
    code = f'path = "{name or folder.name}"  # this folder\n' + loading_code(folder)
    recipe = f"\n## Recipe\n\n```yaml\n{recipe_text}```\n" if recipe_text else ""
    return (f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {Path(base_model).name} — {method}\n\n"
            f"Made with `surgery`. Data: {data}.\n\n## How to load\n\n```python\n{code}```\n\n{notes}"
            f"\n## Before vs after\n\n{table}\n{recipe}")


def card_code(card: str) -> str:
    """The loading code block of a card (what tests run in a fresh process)."""
    section = card.split("## How to load", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]
