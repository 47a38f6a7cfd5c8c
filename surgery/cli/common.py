"""Shared CLI plumbing: argument types that refuse nonsense, models and data from arguments, and the
checks that run before any model loads."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from surgery.data.sources import parse_source, read_text
from surgery.errors import SurgeryError, require

if TYPE_CHECKING:
    import torch


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `surgery: error:` line (exit 2), not a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SurgeryError(f"{self.prog}: {message}")


def progress_enabled() -> bool:
    return sys.stderr.isatty()


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def seqlen_int(text: str) -> int:
    v = positive_int(text)
    if v < 2:
        raise argparse.ArgumentTypeError(f"a window needs at least 2 tokens, got {v}")
    return v


def unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--model", help="model folder, Hub id org/name[@revision], or a reference name")
    g.add_argument("--reference", help="a reference model name (built and cached if needed)")
    p.add_argument("--data-dir", help="benchmark data folder (default: $SURGERY_DATA_DIR)")
    add_device_args(p)


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weights' dtype (default fp32)")


def add_text_args(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    p.add_argument("--data", action="append" if multiple else "store",
                   help="text: embedded:train|test, shakespeare:train|valid|test, tinystories:train|test, "
                   "wikitext2, hub:NAME:CONFIG:SPLIT[:COLUMN], or a .txt/.jsonl/.parquet file or folder"
                   + (" (repeatable)" if multiple else ""))
    p.add_argument("--seqlen", type=seqlen_int, default=128, help="tokens per window (default: 128)")
    p.add_argument("--nsamples", type=positive_int, default=None,
                   help="random calibration windows (default: every non-overlapping window)")
    p.add_argument("--max-windows", type=positive_int, default=None, help="cap on evaluation windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=8)


def add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", choices=["cifar10", "mnist", "digits"], help="image data set")
    p.add_argument("--image-split", default="train", choices=["train", "test"])
    p.add_argument("--classes", type=int, nargs="*", default=None,
                   help="keep only these classes (e.g. the class to forget)")


def device_of(args: argparse.Namespace) -> torch.device:
    """`--device`: auto = the local CUDA device when present (the rank's under torchrun), else CPU."""
    from surgery.dist import resolve_device

    return resolve_device(getattr(args, "device", None) or "auto", "--device")


def dtype_of(args: argparse.Namespace) -> torch.dtype:
    from surgery.models.io import DTYPES

    return DTYPES[getattr(args, "dtype", "fp32") or "fp32"]


def model_source(args: argparse.Namespace) -> str:
    return args.reference or args.model


def model_config(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The resolved model folder and its config.json — without loading any weight."""
    from surgery.models.catalog import check_model_type, read_config, weight_files
    from surgery.reference import resolve_model

    path = resolve_model(model_source(args), args.data_dir, progress=progress_enabled())
    cfg = read_config(path)
    check_model_type(cfg, path)
    weight_files(path)
    return path, cfg


def check_inputs(args: argparse.Namespace, cfg: dict[str, Any], text: bool, images: bool = False) -> None:
    """What can be checked from the config and the arguments alone, before weights load."""
    from surgery.models.catalog import is_diffusion_config

    diffusion = is_diffusion_config(cfg)
    require(not diffusion or args.command == "score",
            f"{model_source(args)} is a diffusion model: `surgery {args.command}` measures classifiers and language "
            "models; judge a generator with an unlearn_stage `judge:` (surgery run) or surgery.evaluate.generation")
    is_vision = "surgery_arch" in cfg or diffusion
    if getattr(args, "images", None):
        require(is_vision, f"--images needs an image classifier or a class-conditional diffusion model; "
                f"{model_source(args)} is a {cfg.get('model_type', 'language')} model (use --data)")
        if args.images in ("cifar10", "mnist"):
            from surgery.data.text import data_dir

            data_dir(args.data_dir)
        device_of(args)
        return
    if text:
        require(not is_vision, f"{model_source(args)} is an image {'generator' if diffusion else 'classifier'}: "
                "use --images, not --data")
        sources = args.data if isinstance(args.data, list) else [args.data]
        require(bool(sources) and sources[0] is not None, "--data is required for a language model")
        check_seqlen(cfg, args.seqlen)
        args.texts = {}
        for s in sources:  # read now: unreadable or empty text fails before any weight loads
            src = parse_source(s)
            if src.kind != "hub":
                args.texts[s] = src.read(args.data_dir)
    device_of(args)


def check_seqlen(cfg: dict[str, Any], seqlen: int) -> None:
    text = cfg.get("text_config") or cfg
    limit = text.get("max_position_embeddings")
    require(limit is None or seqlen <= limit, f"--seqlen {seqlen} exceeds the model's max_position_embeddings ({limit})")


def get_model(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, Path]:
    """The model as its folder describes it (adapter attached), on `--device` in `--dtype`."""
    from surgery.export.folders import load_folder
    from surgery.reference import resolve_model

    path = resolve_model(model_source(args), args.data_dir, progress=progress_enabled())
    model, tok = load_folder(path, dtype=dtype_of(args), device=device_of(args))
    return model.eval(), tok, path


def text_windows(args: argparse.Namespace, tokenizer: Any, source: str | None = None,
                 vocab_size: int | None = None) -> torch.Tensor:
    """Evaluation windows, or seeded calibration windows when `--nsamples` is given."""
    from surgery.data.windows import calib_windows, check_vocab, eval_windows, tokenize

    source = source or args.data
    require(tokenizer is not None, "the model folder has no tokenizer; cannot read text")
    text = getattr(args, "texts", {}).get(source) or read_text(source, args.data_dir)
    ids = tokenize(tokenizer, text)
    if vocab_size is not None:
        check_vocab(ids, vocab_size, source)
    if args.nsamples:
        return calib_windows(ids, args.nsamples, args.seqlen, args.seed)
    return eval_windows(ids, args.seqlen, args.max_windows)


def image_batches(args: argparse.Namespace, model: torch.nn.Module | None = None) -> list[Any]:
    """Classification batches `(x, y)`; for a class-conditional diffusion model, seeded noised
    batches of the images at the model's size (the diffusion loss reads them)."""
    import torch

    from surgery.data.images import load_images
    from surgery.diffusion.model import image_shape, is_diffusion

    diffusion = model is not None and is_diffusion(model)
    data = load_images(args.images, args.image_split, args.data_dir, image_shape(model)[-1] if diffusion else 0)
    if args.classes:
        for c in args.classes:
            require(0 <= c < len(data.classes), f"class {c} does not exist in {args.images} "
                    f"(classes 0..{len(data.classes) - 1})")
        data = data.subset(torch.nonzero(torch.isin(data.y, torch.tensor(args.classes))).flatten())
    require(len(data) > 0, "empty data: no image selected")
    if diffusion:
        from surgery.unlearn.generation import noised_batches

        return list(noised_batches(data, args.batch_size, args.seed, model))
    return list(data.loader(args.batch_size))
