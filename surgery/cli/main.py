"""`surgery` command line: score, mask, eval, compare, build, run, demo.

Every bad input ends in one `surgery: error:` line on stderr and exit status 2, checked before any
model loads where it can be; nothing half-written is left. `--debug` (or SURGERY_DEBUG=1) shows the
traceback of an unexpected error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from surgery.cli import common
from surgery.errors import SurgeryError
from surgery.io import check_output_file


def cmd_score(args: argparse.Namespace) -> None:
    check_output_file(args.out, [args.model], args.overwrite)
    if args.mask_out:
        check_output_file(args.mask_out, [args.model, args.out], args.overwrite)
    _, cfg = common.model_config(args)
    common.check_inputs(args, cfg, text=not args.images)
    from surgery import dist
    from surgery.saliency import score

    if args.cpu:
        args.device = "cpu"
    dist.init_from_env(cpu=args.cpu or None)
    common.require(not args.fsdp or dist.is_distributed(), "--fsdp shards over several processes: launch with torchrun")
    model, tok, _ = common.get_model(args)
    if args.images:
        from surgery.diffusion.model import is_diffusion

        batches = common.image_batches(args, model)
        loss = args.loss or ("diffusion" if is_diffusion(model) else "neg_ce")
        if loss == "diffusion":  # the model's own objective (surgery.diffusion sits above the scorer)
            common.require(is_diffusion(model), "--loss diffusion needs a class-conditional diffusion model")
            from surgery.diffusion.process import diffusion_loss as loss
        desc = f"{args.images}/{args.image_split} classes={args.classes or 'all'}"
    else:
        windows = common.text_windows(args, tok, vocab_size=model.get_input_embeddings().num_embeddings)
        batches = list(windows.split(args.batch_size))
        loss = args.loss or "causal_lm"
        desc = f"{args.data} seqlen={args.seqlen} windows={windows.shape[0]} seed={args.seed}"
    if args.fsdp:
        from surgery.models.fsdp import shard_model

        shard_model(model)
    smap = score(model, batches, loss=loss, kind=args.kind, include=args.include, exclude=args.exclude,
                 progress=common.progress_enabled(), description=desc)
    smap.identify(model, seed=args.seed)
    writes = dist.is_main() or bool(smap.shards)  # a sharded map is written by every rank together
    if writes:
        smap.save(args.out)
        msg = f"saved {smap!r} to {args.out}"
        if args.mask_density is not None:
            masks = smap.mask(args.mask_density, args.mask_scope)
            mask_out = args.mask_out or str(Path(args.out).with_suffix("")) + ".mask.safetensors"
            masks.save(mask_out, packed=args.packed)
            msg += f"; mask ({masks.selected}/{masks.numel}) to {mask_out}"
        if dist.is_main():
            print(msg)
    dist.shutdown()


def cmd_mask(args: argparse.Namespace) -> None:
    check_output_file(args.out, [args.map, args.model], args.overwrite)
    common.require(Path(args.map).is_file(), f"file not found: {args.map}")
    from surgery.saliency import SaliencyMap

    model = None
    if args.model:
        from surgery.models.io import load_model

        model, _ = load_model(args.model)
    smap = SaliencyMap.load(args.map, model)
    device = common.device_of(args)
    if device.type != "cpu":  # the exact top-k's GPU path
        smap = SaliencyMap({n: t.to(device) for n, t in smap.items()}, kind=smap.kind, loss=smap.loss,
                           data=smap.data, samples=smap.samples, batches=smap.batches)
    masks = smap.mask(args.density, args.scope)
    masks.save(args.out, packed=args.packed)
    print(f"selected {masks.selected} of {masks.numel} weights ({masks.density:.6f}) -> {args.out}")


def cmd_eval(args: argparse.Namespace) -> None:
    _, cfg = common.model_config(args)
    common.check_inputs(args, cfg, text=not args.images)
    from surgery.data.images import load_images
    from surgery.evaluate import accuracy, evaluate_lm, to_json, to_markdown

    from surgery.evaluate.tasks import check_specs, run_tasks

    check_specs(args.tasks or [])
    model, tok, path = common.get_model(args)
    if args.images:
        data = load_images(args.images, "test", args.data_dir)
        print(json.dumps({"test_acc": accuracy(model, data)}, indent=2))
        return
    windows = common.text_windows(args, tok, vocab_size=model.get_input_embeddings().num_embeddings)
    rep = evaluate_lm(model, {args.data: windows}, name=path.name, path=path, speed=not args.no_speed,
                      batch_size=args.batch_size)
    for spec, acc in run_tasks(model, tok, args.tasks or [], args.data_dir, args.batch_size).items():
        rep.metrics[f"task:{spec}"] = acc
    print(to_markdown([rep]) if not args.json else json.dumps(to_json([rep]), indent=2))


def cmd_compare(args: argparse.Namespace) -> None:
    from surgery.io import atomic_dir, check_output_folder
    from surgery.models.catalog import check_model_type, read_config
    from surgery.reference import resolve_model

    if args.out:
        check_output_folder(args.out, args.overwrite)
    common.require(bool(args.data), "--data is required (at least one text)")
    args.model, args.reference = args.dense, None
    _, cfg = common.model_config(args)
    common.check_inputs(args, cfg, text=True)
    paths = [resolve_model(c, args.data_dir) for c in args.candidate]
    for path in paths:
        check_model_type(read_config(path), path)
    from surgery.evaluate import compare
    from surgery.evaluate.tasks import check_specs
    from surgery.export.folders import write_marker
    from surgery.recipe.report import evaluate_folders

    check_specs(args.tasks or [])
    dense, tok, dense_path = common.get_model(args)
    vocab = dense.get_input_embeddings().num_embeddings
    sets = {source: common.text_windows(args, tok, source, vocab) for source in args.data}
    names = [Path(c).name for c in args.candidate]
    common.require(len(set(names)) == len(names), f"candidates need distinct folder names, got {names}")
    reports = evaluate_folders(dense, dense_path, tok, sets, dict(zip(names, paths)), speed=not args.no_speed,
                               tasks=args.tasks, data_dir=args.data_dir, batch_size=args.batch_size,
                               dense_name=Path(args.dense).name)
    print(compare.to_markdown(reports))
    if args.out:
        with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
            compare.write(reports, tmp)
            write_marker(tmp, "comparison")
        print(f"wrote {args.out}/comparison.md, .json, .png")


def cmd_build(args: argparse.Namespace) -> None:
    from surgery.reference.specs import get_spec

    get_spec(args.name)
    from surgery.reference import build, info

    path = build(args.name, args.data_dir, force=args.force, progress=common.progress_enabled())
    print(json.dumps({"path": str(path), **info(path)["quality"]}, indent=2))


def cmd_run(args: argparse.Namespace) -> None:
    from surgery.recipe.plan import prepare

    if args.cpu and args.device is None:
        args.device = "cpu"
    plan = prepare(args.recipe, args.output, args.model, args.set, args.overwrite, args.data_dir,
                   progress=common.progress_enabled(), device=args.device, dtype=args.dtype)  # before torch loads
    from surgery import dist
    from surgery.recipe.run import execute

    dist.init_from_env(cpu=args.cpu or None)  # data-parallel calibration under torchrun
    metrics = execute(plan, args.overwrite, args.data_dir, progress=common.progress_enabled() and dist.is_main())
    if dist.is_main():
        if "table" in metrics:
            print(metrics["table"])
        print(f"wrote {args.output}/ in {metrics['seconds']} s")
    dist.shutdown()


def cmd_demo(args: argparse.Namespace) -> None:
    from surgery.io import MARKER

    out = Path(args.output)
    if out.exists() and not (out / "demo.json").exists():
        raise SurgeryError(f"{out} exists and is not a previous demo output (no demo.json or {MARKER}); choose --output")
    from surgery.cli.demo import run_demo

    run_demo(args.output, progress=common.progress_enabled(), device=common.device_of(args),
             dtype=common.dtype_of(args))


def parser() -> argparse.ArgumentParser:
    p = common.Parser(prog="surgery", allow_abbrev=False, description="Weight-saliency model surgery.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=common.Parser)

    s = sub.add_parser("score", allow_abbrev=False, help="score weight saliency")
    common.add_model_args(s)
    common.add_text_args(s)
    common.add_image_args(s)
    s.add_argument("--kind", default="abs_grad", choices=["grad", "abs_grad", "fisher", "taylor"])
    s.add_argument("--loss", choices=["causal_lm", "neg_causal_lm", "ce", "neg_ce", "diffusion"],
                   help="default: causal_lm (text), neg_ce (images), diffusion (a class-conditional UNet)")
    s.add_argument("--include", nargs="*", help="parameter-name regexes to score")
    s.add_argument("--exclude", nargs="*", help="parameter-name regexes to skip")
    s.add_argument("--out", required=True, help="saliency map (.safetensors)")
    s.add_argument("--mask-density", type=common.unit_float, help="also write a top-density mask")
    s.add_argument("--mask-scope", default="global", choices=["global", "tensor"])
    s.add_argument("--mask-out", help="mask file (default: <out>.mask.safetensors)")
    s.add_argument("--packed", action="store_true", help="bit-pack the mask")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.add_argument("--cpu", action="store_true", help="gloo on CPU under torchrun")
    s.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model with FSDP2 (each rank scores its own rows)")
    s.set_defaults(func=cmd_score)

    m = sub.add_parser("mask", allow_abbrev=False, help="top-density mask from a saliency map")
    m.add_argument("--map", required=True)
    m.add_argument("--density", type=common.unit_float, required=True)
    m.add_argument("--scope", default="global", choices=["global", "tensor"])
    m.add_argument("--model", help="check the map against this model")
    m.add_argument("--out", required=True)
    m.add_argument("--packed", action="store_true")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.add_argument("--device", default="auto", help="where the top-k runs: auto, cpu, cuda, cuda:N")
    m.set_defaults(func=cmd_mask)

    e = sub.add_parser("eval", allow_abbrev=False, help="perplexity / accuracy, size, speed")
    common.add_model_args(e)
    common.add_text_args(e)
    e.add_argument("--images", choices=["cifar10", "mnist", "digits"])
    e.add_argument("--no-speed", action="store_true")
    e.add_argument("--json", action="store_true")
    e.add_argument("--tasks", nargs="*", help="lm-eval tasks: names, task YAML paths, or nextline@SOURCE")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", allow_abbrev=False, help="dense vs candidates, with ratios")
    c.add_argument("--dense", required=True, help="the dense model (folder, Hub id or reference name)")
    c.add_argument("--candidate", action="append", default=[], required=True)
    common.add_text_args(c, multiple=True)
    c.add_argument("--data-dir")
    common.add_device_args(c)
    c.add_argument("--no-speed", action="store_true")
    c.add_argument("--tasks", nargs="*", help="lm-eval tasks: names, task YAML paths, or nextline@SOURCE")
    c.add_argument("--out", help="folder for comparison.md/.json/.png")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("build", allow_abbrev=False, help="build (or show) a reference model")
    b.add_argument("name")
    b.add_argument("--data-dir")
    b.add_argument("--force", action="store_true")
    b.set_defaults(func=cmd_build)

    r = sub.add_parser("run", allow_abbrev=False, help="run a YAML recipe")
    r.add_argument("recipe")
    r.add_argument("--model", help="model folder, Hub id or reference name (overrides the recipe's)")
    r.add_argument("--output", required=True)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. quant_stage.quant_modifiers.GPTQModifier.num_bits=3")
    r.add_argument("--overwrite", action="store_true", help="replace a previous output and its checkpoints")
    r.add_argument("--data-dir")
    r.add_argument("--device", help="override the recipe's device: auto, cpu, cuda, cuda:N")
    r.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="override the recipe's dtype")
    r.add_argument("--cpu", action="store_true", help="gloo on CPU under torchrun (implies --device cpu)")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", allow_abbrev=False, help="the main job on the embedded default")
    d.add_argument("--output", default="surgery-demo")
    common.add_device_args(d)
    d.set_defaults(func=cmd_demo)
    return p


def _quiet_libraries() -> None:
    """Off a terminal, hide transformers' progress bars and advisory warnings (set before it loads;
    its loading report still reaches surgery, which turns missing or unexpected weights into an error)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # already loaded (surgery called from Python)
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _debug(argv: list[str] | None) -> bool:
    return "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("SURGERY_DEBUG") == "1"


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    debug = _debug(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM (a killed job) unwinds like Ctrl-C, so temporary outputs are removed on the way out
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    try:
        _quiet_libraries()
        args = parser().parse_args(argv)
        args.func(args)
    except SurgeryError as e:
        if debug:
            raise
        print(f"surgery: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("surgery: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except Exception as e:  # a bug in surgery or a library: still one line, the traceback on request
        if debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"surgery: error: unexpected {type(e).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
