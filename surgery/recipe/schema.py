"""Recipe YAML: parsed strictly, every error names the file, the line and the key.

    model: shakespeare-lm            # a reference name or a model folder (--model overrides)
    calibration:                     # shared by every stage that calibrates or scores
      data: shakespeare:train
      nsamples: 128
      seqlen: 256
      seed: 0
    quant_stage:
      quant_modifiers:
        GPTQModifier: {num_bits: 4, group_size: 128, targets: [Linear], ignore: [lm_head]}
    eval_stage:
      data: [shakespeare:test, wikitext2]
      seqlen: 256

Stages run in file order. A stage holds one `*_modifiers` group whose keys are modifier names
(llm-compressor's layout); each modifier's options map 1:1 onto the engine's config dataclass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from surgery.errors import SurgeryError
from surgery.prune.config import PruneConfig
from surgery.quantize.config import QuantConfig
from surgery.unlearn.config import UnlearnConfig

QUANT_MODIFIERS = {"RTNModifier": "rtn", "GPTQModifier": "gptq", "ApiQModifier": "apiq"}
PRUNE_MODIFIERS = {"TyrPruningModifier"}
UNLEARN_MODIFIERS = {"SalUnModifier": "salun", "UnlearnModifier": None}
UNLEARN_DATA_KEYS = {"images": str, "forget_class": int, "forget_fraction": float, "split_seed": int,
                     "forget": str, "retain": str, "seqlen": int, "max_windows": int, "retain_per_forget": int}
TOP_KEYS = {"model", "calibration", "unlearn_stage", "prune_stage", "quant_stage", "eval_stage"}
CALIB_KEYS = {"data": str, "nsamples": int, "seqlen": int, "seed": int, "batch_size": int}
EVAL_KEYS = {"data": list, "seqlen": int, "max_windows": int, "speed": bool}


@dataclass
class Calibration:
    data: str = "embedded:train"
    nsamples: int = 128
    seqlen: int = 256
    seed: int = 0
    batch_size: int = 8


@dataclass
class EvalStage:
    data: list[str] = field(default_factory=lambda: ["embedded:test"])
    seqlen: int = 256
    max_windows: int | None = None
    speed: bool = True


@dataclass
class Stage:
    name: str  # the YAML key, e.g. quant_stage
    kind: str  # unlearn | prune | quant | eval
    modifier: str | None = None
    config: Any = None


@dataclass
class Recipe:
    path: str
    model: str | None
    calibration: Calibration
    stages: list[Stage]
    raw: dict[str, Any]


class _Loader(yaml.SafeLoader):
    """Keeps each mapping key's line number."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping = {}
    lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise SurgeryError(f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
        mapping[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    mapping["__lines__"] = lines
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "__lines__"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


class _Ctx:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, node: dict, key: str | None, message: str) -> SurgeryError:
        line = node.get("__lines__", {}).get(key, "?") if isinstance(node, dict) else "?"
        return SurgeryError(f"{self.path}:{line}: {message}")

    def mapping(self, node: Any, where: str, parent: dict, key: str) -> dict:
        if not isinstance(node, dict):
            raise self.fail(parent, key, f"{where} must be a mapping, got {type(node).__name__}")
        return node

    def check_keys(self, node: dict, allowed: set[str], where: str) -> None:
        for k in node:
            if k != "__lines__" and k not in allowed:
                raise self.fail(node, k, f"unknown key {k!r} in {where}; allowed: {sorted(allowed)}")

    def typed(self, node: dict, key: str, typ: type, where: str) -> Any:
        value = node[key]
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if typ is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise self.fail(node, key, f"{where}.{key} must be {typ.__name__}, got {type(value).__name__} "
                                       f"({value!r})")
        return value


def _accepts(annotation: str, value: Any) -> bool:
    """Whether `value` fits a (string) annotation such as `int`, `float`, `str | None`, `list[str]`."""
    options = [a.strip() for a in annotation.split("|")]
    for opt in options:
        if opt == "None" and value is None:
            return True
        if opt == "bool" and isinstance(value, bool):
            return True
        if opt == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if opt == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if opt == "str" and isinstance(value, str):
            return True
        if opt.startswith("list") and isinstance(value, list):
            return True
        if opt == "Any":
            return True
    return False


def _dataclass_options(ctx: _Ctx, node: dict, cls: type, where: str) -> dict[str, Any]:
    """Check a modifier's options against the config dataclass's fields and their types."""
    types = {f.name: str(f.type) for f in fields(cls)}
    out = {}
    for key, value in node.items():
        if key == "__lines__":
            continue
        if key not in types:
            raise ctx.fail(node, key, f"unknown option {key!r} for {where}; allowed: {sorted(types)}")
        if not _accepts(types[key], value):
            raise ctx.fail(node, key, f"{where}.{key} must be {types[key]}, got {type(value).__name__} "
                                      f"({value!r})")
        out[key] = _strip(value)
    return out


def parse(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; `overrides` are `section.key=value` strings (YAML values)."""
    p = Path(path)
    if not p.is_file():
        raise SurgeryError(f"recipe not found: {p}")
    try:
        data = yaml.load(p.read_text(), Loader=type("L", (_Loader,), {"name": str(p)}))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise SurgeryError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    ctx = _Ctx(str(p))
    if not isinstance(data, dict):
        raise SurgeryError(f"{p}:1: a recipe must be a mapping of sections")
    for item in overrides or []:
        _apply_override(ctx, data, item)
    ctx.check_keys(data, TOP_KEYS, "the recipe")
    model = ctx.typed(data, "model", str, "recipe") if "model" in data else None
    calib = Calibration()
    if "calibration" in data:
        node = ctx.mapping(data["calibration"], "calibration", data, "calibration")
        ctx.check_keys(node, set(CALIB_KEYS), "calibration")
        for k, t in CALIB_KEYS.items():
            if k in node:
                setattr(calib, k, ctx.typed(node, k, t, "calibration"))
    stages = []
    for key in data:
        if key in ("__lines__", "model", "calibration"):
            continue
        node = ctx.mapping(data[key], key, data, key)
        if key == "eval_stage":
            ctx.check_keys(node, set(EVAL_KEYS), "eval_stage")
            ev = EvalStage()
            for k, t in EVAL_KEYS.items():
                if k in node:
                    setattr(ev, k, ctx.typed(node, k, t, "eval_stage"))
            stages.append(Stage(key, "eval", config=ev))
        elif key == "unlearn_stage":
            ctx.check_keys(node, {"data", "unlearn_modifiers"}, key)
            if "data" not in node:
                raise ctx.fail(data, key, "unlearn_stage needs a data section (what to forget)")
            dnode = ctx.mapping(node["data"], "unlearn_stage.data", node, "data")
            ctx.check_keys(dnode, set(UNLEARN_DATA_KEYS), "unlearn_stage.data")
            udata = {k: ctx.typed(dnode, k, t, "unlearn_stage.data") for k, t in UNLEARN_DATA_KEYS.items()
                     if k in dnode}
            if "images" in udata and ("forget_class" in udata) == ("forget_fraction" in udata):
                raise ctx.fail(node, "data", "unlearn_stage.data needs exactly one of forget_class, forget_fraction")
            if "images" not in udata and "forget" not in udata:
                raise ctx.fail(node, "data", "unlearn_stage.data needs images (classifier) or forget (text)")
            if udata.get("retain_per_forget", 1) < 1:
                raise ctx.fail(dnode, "retain_per_forget", "unlearn_stage.data.retain_per_forget must be ≥ 1, "
                               f"got {udata['retain_per_forget']}")
            name, opts = _one_modifier(ctx, data, key, node, "unlearn_modifiers", UNLEARN_MODIFIERS, ("data",))
            kw = _dataclass_options(ctx, opts, UnlearnConfig, name)
            if UNLEARN_MODIFIERS[name]:
                if "method" in kw:
                    raise ctx.fail(opts, "method", f"{name} sets the method itself; remove 'method'")
                kw["method"] = UNLEARN_MODIFIERS[name]
            try:
                cfg = UnlearnConfig(**kw)
            except SurgeryError as e:
                raise ctx.fail(node["unlearn_modifiers"], name, f"{name}: {e}") from None
            stages.append(Stage(key, "unlearn", name, {"config": cfg, "data": udata}))
        elif key == "prune_stage":
            name, opts = _one_modifier(ctx, data, key, node, "prune_modifiers", PRUNE_MODIFIERS)
            kw = _dataclass_options(ctx, opts, PruneConfig, name)
            for k in ("nsamples", "seqlen", "seed", "batch_size"):
                kw.setdefault(k, getattr(calib, k))
            try:
                cfg = PruneConfig(**kw)
            except SurgeryError as e:
                raise ctx.fail(node["prune_modifiers"], name, f"{name}: {e}") from None
            stages.append(Stage(key, "prune", name, cfg))
        elif key == "quant_stage":
            name, opts = _one_modifier(ctx, data, key, node, "quant_modifiers", QUANT_MODIFIERS)
            mods = node["quant_modifiers"]
            kw = _dataclass_options(ctx, opts, QuantConfig, name)
            if "method" in kw:
                raise ctx.fail(opts, "method", f"{name} sets the method itself; remove 'method'")
            try:
                cfg = QuantConfig(method=QUANT_MODIFIERS[name], nsamples=calib.nsamples,
                                  seqlen=calib.seqlen, seed=calib.seed, batch_size=calib.batch_size,
                                  **kw)
            except SurgeryError as e:
                raise ctx.fail(mods, name, f"{name}: {e}") from None
            stages.append(Stage(key, "quant", name, cfg))
    if not stages:
        raise SurgeryError(f"{p}: the recipe has no stage (unlearn_stage, prune_stage, quant_stage, eval_stage)")
    return Recipe(str(p), model, calib, stages, _strip(data))


def _one_modifier(ctx: _Ctx, data: dict, key: str, node: dict, group: str,
                  known: set[str] | dict[str, Any], extra: tuple[str, ...] = ()) -> tuple[str, dict]:
    """The single modifier of a stage's `*_modifiers` group and its options."""
    ctx.check_keys(node, {group, *extra}, key)
    if group not in node:
        raise ctx.fail(data, key, f"{key} needs a {group} group")
    mods = ctx.mapping(node[group], group, node, group)
    names = [k for k in mods if k != "__lines__"]
    if len(names) != 1:
        raise ctx.fail(node, group, f"{group} holds exactly one modifier")
    name = names[0]
    if name not in known:
        raise ctx.fail(mods, name, f"unknown modifier {name!r}; known: {sorted(known)}")
    return name, ctx.mapping(mods[name] or {}, name, mods, name)


def _apply_override(ctx: _Ctx, data: dict, item: str) -> None:
    """`--set quant_stage.quant_modifiers.GPTQModifier.num_bits=3` style overrides."""
    if "=" not in item:
        raise SurgeryError(f"--set expects key=value, got {item!r}")
    dotted, _, raw = item.partition("=")
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            raise SurgeryError(f"--set {dotted}: no section {part!r} in {ctx.path}")
        node = node[part]
    if not isinstance(node, dict):
        raise SurgeryError(f"--set {dotted}: {parts[-2]!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)
    node.setdefault("__lines__", {})[parts[-1]] = "--set"
