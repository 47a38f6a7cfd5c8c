"""Recipe YAML: validated against the engines' own config classes, before any model loads.

    model: shakespeare-lm            # a reference name, a model folder or a Hub id (--model overrides)
    device: auto                     # auto (CUDA when present) | cpu | cuda | cuda:N  (--device overrides)
    dtype: fp32                      # fp32 | bf16 | fp16: the weights' dtype  (--dtype overrides)
    calibration:                     # shared by every stage that calibrates or scores
      data: shakespeare:train
      nsamples: 128
      seqlen: 256
    quant_stage:
      quant_modifiers:
        GPTQModifier: {num_bits: 4, group_size: 128, targets: [Linear], ignore: [lm_head]}
    eval_stage:
      data: [shakespeare:test, wikitext2]

Stages run in file order. A stage holds one `*_modifiers` group whose single key is a modifier
name (llm-compressor's layout) and whose options are exactly the fields of that modifier's config
class (`GPTQConfig`, `PruneConfig`, ...): one source of truth for names, types, ranges and
defaults. Every error names the file, the line and the key.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Field, Strict, ValidationError

from surgery.config import Bool, Int, NonNegFloat, PosInt, Str, config_class, describe, to_dict, validate
from surgery.data.sources import parse_source
from surgery.errors import SurgeryError, require
from surgery.prune.config import PruneConfig
from surgery.quantize.config import ApiQConfig, GPTQConfig, RTNConfig
from surgery.recipe import yaml_lines
from surgery.unlearn.config import GEN_METHODS, UnlearnConfig

SeqLen = Annotated[int, Strict(), Field(ge=2)]
Fraction = Annotated[float, Strict(), Field(gt=0, lt=1)]


Sources = Str | Annotated[list[Str], Field(min_length=1)]


@config_class
class Calibration:
    """Calibration windows: `nsamples` random windows of `seqlen` tokens of `data`, batched. `data`
    may list several texts: the windows are drawn evenly from each (a stated domain mix)."""

    data: Sources = "embedded:train"
    nsamples: PosInt = 128
    seqlen: SeqLen = 256
    seed: Int = 0
    batch_size: PosInt = 8

    def __post_init__(self) -> None:
        for name in self.sources:
            src = parse_source(name)
            require(src.split != "test", f"calibration data {name!r} is a test split: calibrate on training text")

    @property
    def sources(self) -> list[str]:
        return [self.data] if isinstance(self.data, str) else list(self.data)

    @property
    def description(self) -> str:
        return f"{' + '.join(self.sources)} ({self.nsamples} windows of {self.seqlen}, seed {self.seed})"


@config_class
class CalibrationPatch:
    """A stage's changes to the recipe's calibration (unset fields inherit)."""

    data: Sources | None = None
    nsamples: PosInt | None = None
    seqlen: SeqLen | None = None
    seed: Int | None = None
    batch_size: PosInt | None = None

    def over(self, base: Calibration) -> Calibration:
        return dataclasses.replace(base, **{k: v for k, v in dataclasses.asdict(self).items() if v is not None})


@config_class
class EvalStage:
    """Perplexity on each text (GPTQ protocol), KL to dense, size and speed — dense vs result."""

    kind: ClassVar[str] = "eval"
    data: Annotated[list[Str], Field(min_length=1)] = dataclasses.field(default_factory=lambda: ["embedded:test"])
    seqlen: SeqLen = 256
    max_windows: PosInt | None = None
    batch_size: PosInt = 8
    speed: Bool = True
    tasks: list[Str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        from surgery.evaluate.tasks import check_specs

        for d in self.data:
            parse_source(d)
        check_specs(self.tasks)


@config_class
class QuantModifiers:
    RTNModifier: RTNConfig | None = None
    GPTQModifier: GPTQConfig | None = None
    ApiQModifier: ApiQConfig | None = None


@config_class
class QuantStage:
    kind: ClassVar[str] = "quant"
    quant_modifiers: QuantModifiers
    calibration: CalibrationPatch | None = None


@config_class
class PruneModifiers:
    TyrPruningModifier: PruneConfig


@config_class
class PruneStage:
    kind: ClassVar[str] = "prune"
    prune_modifiers: PruneModifiers
    calibration: CalibrationPatch | None = None


@config_class
class UnlearnData:
    """What to forget: an image class or a random share (`images`), or a text (`forget`, with a
    `retain` text) for a language model.

    For a class-conditional diffusion model (`forget_class` only; images resized to the model's
    size): `judge` names the classifier of real images that scores generated ones (a reference
    name or a folder; without one, only held-out diffusion losses are reported), with
    `samples_per_class` images per class (5× that for the forgotten class), `sampling_steps` DDIM
    steps and classifier-free `guidance`."""

    images: Literal["cifar10", "mnist", "digits"] | None = None
    forget_class: Annotated[int, Strict(), Field(ge=0)] | None = None
    forget_fraction: Fraction | None = None
    split_seed: Int = 0
    forget: Str | None = None
    retain: Str | None = None
    seqlen: SeqLen = 256
    max_windows: PosInt | None = None
    retain_per_forget: PosInt = 1
    judge: Str | None = None
    samples_per_class: PosInt = 100
    sampling_steps: PosInt = 50
    guidance: NonNegFloat = 2.0

    def __post_init__(self) -> None:
        if self.images is not None:
            require((self.forget_class is None) != (self.forget_fraction is None),
                    "unlearn_stage.data needs exactly one of forget_class, forget_fraction")
            require(self.forget is None and self.retain is None, "images and forget/retain texts do not mix")
        else:
            require(self.forget is not None and self.retain is not None,
                    "unlearn_stage.data needs images (a classifier) or forget and retain texts (a language model)")
            parse_source(self.forget)
            parse_source(self.retain)


@config_class
class UnlearnModifiers:
    SalUnModifier: UnlearnConfig | None = None
    UnlearnModifier: UnlearnConfig | None = None


@config_class
class UnlearnStage:
    kind: ClassVar[str] = "unlearn"
    data: UnlearnData
    unlearn_modifiers: UnlearnModifiers


STAGES: dict[str, type] = {"unlearn_stage": UnlearnStage, "prune_stage": PruneStage, "quant_stage": QuantStage,
                           "eval_stage": EvalStage}
TOP = ("model", "device", "dtype", "calibration")
DTYPES = ("fp32", "bf16", "fp16")


def check_device(name: object) -> str:
    """A device name's syntax (the machine is checked when the run starts)."""
    import re

    require(isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", name) is not None,
            f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def check_dtype(name: object) -> str:
    require(name in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return name
GROUPS = {"quant_stage": "quant_modifiers", "prune_stage": "prune_modifiers", "unlearn_stage": "unlearn_modifiers"}


@dataclasses.dataclass
class Stage:
    name: str  # the YAML key, e.g. quant_stage
    kind: str  # unlearn | prune | quant | eval
    spec: Any  # the validated stage
    modifier: str | None = None
    config: Any = None  # the modifier's config (None for eval)

    def calibration(self, base: Calibration) -> Calibration:
        patch = getattr(self.spec, "calibration", None)
        return patch.over(base) if patch is not None else base


@dataclasses.dataclass
class Recipe:
    path: str
    model: str | None
    calibration: Calibration
    stages: list[Stage]
    device: str = "auto"
    dtype: str = "fp32"

    def resolved(self, model: str | None = None) -> dict[str, Any]:
        """The recipe with every default filled and overrides applied (what was run)."""
        out: dict[str, Any] = {"model": model or self.model, "device": self.device, "dtype": self.dtype,
                               "calibration": to_dict(self.calibration)}
        for st in self.stages:
            d = {k: v for k, v in to_dict(st.spec).items() if v is not None}
            if st.modifier is not None:
                cfg = to_dict(st.config)
                if st.modifier == "SalUnModifier":
                    cfg.pop("method")
                d[GROUPS[st.name]] = {st.modifier: cfg}
            out[st.name] = d
        return out

    def dump(self, model: str | None = None) -> str:
        return yaml.safe_dump(self.resolved(model), sort_keys=False)

    def sources(self) -> list[str]:
        """Every text source the recipe reads (checked before the first stage)."""
        out = list(self.calibration.sources) if any(s.kind in ("quant", "prune") for s in self.stages) else []
        for st in self.stages:
            if st.kind in ("quant", "prune"):
                out += st.calibration(self.calibration).sources
            elif st.kind == "eval":
                out += st.spec.data + [t.split("@", 1)[1] for t in st.spec.tasks if t.startswith(("nextline@", "wordorder@"))]
            elif st.kind == "unlearn" and st.spec.data.forget is not None:
                out += [st.spec.data.forget, st.spec.data.retain]
        return list(dict.fromkeys(out))

    def check_model(self, cfg: dict[str, Any]) -> None:
        """What a model's config.json alone says about this recipe: stage kinds and window lengths."""
        from surgery.models.catalog import is_diffusion_config

        if is_diffusion_config(cfg):
            require(cfg.get("num_class_embeds") is not None, f"{self.path}: the UNet has no class conditioning "
                    "(num_class_embeds); surgery unlearns a class from class-conditional diffusion models only")
            classes = int(cfg["num_class_embeds"]) - 1  # the last embedding is the unconditional one
            for st in self.stages:
                d = st.spec.data if st.kind == "unlearn" else None
                require(d is not None and d.forget_class is not None, f"{self.path}: {st.name}: a diffusion model "
                        "takes an unlearn_stage with images and forget_class only")
                require(0 <= d.forget_class < classes, f"{self.path}: {st.name}: forget_class {d.forget_class} is not "
                        f"one of the UNet's {classes} classes (0–{classes - 1})")
                require(st.config.method in GEN_METHODS, f"{self.path}: {st.name}: method {st.config.method!r} is not "
                        f"for diffusion models; use one of {', '.join(GEN_METHODS)}")
            return
        vision = "surgery_arch" in cfg
        for st in self.stages:
            images = st.kind == "unlearn" and st.spec.data.images is not None
            require(vision == images or st.kind == "unlearn" and not vision and not images,
                    f"{self.path}: {st.name} needs {'an image classifier' if images else 'a language model'}; the model is "
                    f"{'an image classifier' if vision else 'a ' + str(cfg.get('model_type')) + ' language model'}")
        if vision:
            return
        limit = (cfg.get("text_config") or cfg).get("max_position_embeddings")
        lengths = [st.calibration(self.calibration).seqlen for st in self.stages if st.kind in ("quant", "prune")]
        lengths += [st.spec.seqlen for st in self.stages if st.kind == "eval"]
        lengths += [st.spec.data.seqlen for st in self.stages if st.kind == "unlearn"]
        for n in lengths:
            require(limit is None or n <= limit,
                    f"{self.path}: seqlen {n} exceeds the model's max_position_embeddings ({limit})")

    def check_inputs(self, data_dir: str | os.PathLike | None) -> None:
        """Every stage's data exists (files, the data folder) — before any model loads."""
        for src in self.sources():
            parse_source(src).check(data_dir)
        for st in self.stages:
            judge = st.spec.data.judge if st.kind == "unlearn" else None
            if judge:
                from pathlib import Path

                from surgery.reference.specs import REFERENCES

                require(judge in REFERENCES or (Path(judge) / "config.json").is_file(),
                        f"{self.path}: judge {judge!r} is neither a reference model nor a model folder")
            if st.kind == "unlearn" and st.spec.data.images in ("cifar10", "mnist"):
                from surgery.data.text import data_dir as find

                find(data_dir)


def _allowed(cls: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config class found at `loc` inside `cls` (for unknown-key errors)."""
    import typing

    for part in loc:
        hints = typing.get_type_hints(cls)
        if not isinstance(part, str) or part not in hints:
            return []
        t = hints[part]
        args = [a for a in typing.get_args(t) if dataclasses.is_dataclass(a)]
        cls = args[0] if args else t
        if not dataclasses.is_dataclass(cls):
            return []
    return [f.name for f in dataclasses.fields(cls)]


def _modifier(stage: Any, name: str) -> tuple[str, Any]:
    group = getattr(stage, GROUPS[name])
    chosen = [(f.name, getattr(group, f.name)) for f in dataclasses.fields(group) if getattr(group, f.name) is not None]
    require(len(chosen) == 1, f"{name}.{GROUPS[name]} holds exactly one modifier, got "
            f"{', '.join(n for n, _ in chosen) or 'none'}")
    return chosen[0]


def _stage(name: str, node: Any) -> Stage:
    cls = STAGES[name]
    require(isinstance(node, dict), f"{name} must be a mapping")
    spec = validate(cls, node)
    if cls is EvalStage:
        return Stage(name, "eval", spec)
    modifier, cfg = _modifier(spec, name)
    if modifier == "SalUnModifier":
        require("method" not in node[GROUPS[name]][modifier], "SalUnModifier sets the method itself; remove 'method'")
        cfg = dataclasses.replace(cfg, method="salun")
    return Stage(name, cls.kind, spec, modifier, cfg)


def apply_override(data: dict[str, Any], lines: dict, item: str) -> None:
    """`--set quant_stage.quant_modifiers.GPTQModifier.num_bits=3`: sections must exist, the leaf
    may be new; the value is YAML."""
    require("=" in item, f"--set expects KEY=VALUE, got {item!r}")
    dotted, _, raw = item.partition("=")
    parts = dotted.split(".")
    require(all(parts), f"--set {dotted}: empty key part")
    node = data
    for part in parts[:-1]:
        require(isinstance(node, dict) and part in node, f"--set {dotted}: no section {part!r} in the recipe")
        node = node[part]
    require(isinstance(node, dict), f"--set {dotted}: {parts[-2]!r} is not a section")
    node[parts[-1]] = yaml_lines.value(raw, f"--set {dotted}")
    lines[tuple(parts)] = "--set"


def parse(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; `overrides` are `section.key=value` strings (YAML values)."""
    p = Path(path)
    require(p.is_file(), f"recipe not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SurgeryError(f"{p} is not UTF-8 text") from None
    data, lines = yaml_lines.load(text, str(p))
    require(isinstance(data, dict), f"{p}:1: a recipe must be a mapping of sections")
    for item in overrides or []:
        apply_override(data, lines, item)
    model, calib, stages, device, dtype = None, Calibration(), [], "auto", "fp32"
    for key, node in data.items():
        where = f"{p}:{yaml_lines.line_of(lines, (key,))}"
        try:
            if key == "model":
                require(node is None or isinstance(node, str), f"model must be a string, got {node!r}")
                model = node
            elif key == "device":
                device = check_device(node)
            elif key == "dtype":
                dtype = check_dtype(node)
            elif key == "calibration":
                calib = validate(Calibration, node)
            elif key in STAGES:
                stages.append(_stage(key, node))
            else:
                raise SurgeryError(f"unknown key {key!r}; allowed: {', '.join(TOP + tuple(STAGES))}")
        except ValidationError as e:
            err = e.errors()[0]
            loc = (key, *err["loc"])
            msg = describe(e, key)
            if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
                cls = Calibration if key == "calibration" else STAGES.get(key)
                msg += f"; allowed: {', '.join(_allowed(cls, err['loc'][:-1]))}"
            raise SurgeryError(f"{p}:{yaml_lines.line_of(lines, loc)}: {msg}") from None
        except SurgeryError as e:
            raise SurgeryError(f"{where}: {key}: {e}" if key in TOP + tuple(STAGES) else f"{where}: {e}") from None
    require(bool(stages), f"{p}: the recipe has no stage ({', '.join(STAGES)})")
    require(all(s.kind != "eval" for s in stages[:-1]),
            f"{p}: eval_stage must be the last stage (it evaluates the folder the recipe writes)")
    return Recipe(str(p), model, calib, stages, device, dtype)
