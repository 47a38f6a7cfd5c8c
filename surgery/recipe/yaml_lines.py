"""YAML to plain Python with the line of every key kept aside, so that an error in a recipe names
the file, the line and the key. Duplicate keys are errors; `1e-4` is a float (YAML 1.1 wants a dot)."""
from __future__ import annotations

import re
from typing import Any

import yaml

from surgery.errors import SurgeryError

Path_ = tuple[Any, ...]

_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$")


class _Constructor(yaml.SafeLoader):
    pass


def _scalar(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    if node.tag == "tag:yaml.org,2002:str" and node.style is None and _FLOAT.match(node.value):
        return float(node.value)
    return loader.construct_object(node, deep=True)


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, lines: dict[Path_, int], where: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(loader, key_node) if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise SurgeryError(f"{where}:{line}: a key must be a plain scalar")
            if key in out:
                raise SurgeryError(f"{where}:{line}: duplicate key {key!r}")
            lines[(*path, key)] = line
            out[key] = _build(loader, value_node, (*path, key), lines, where)
        return out
    if isinstance(node, yaml.SequenceNode):
        out_list = []
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            out_list.append(_build(loader, item, (*path, i), lines, where))
        return out_list
    return _scalar(loader, node)


def load(text: str, where: str) -> tuple[Any, dict[Path_, int]]:
    """(the document as plain Python, path → line), or a one-line error naming `where:line`."""
    lines: dict[Path_, int] = {}
    try:
        loader = _Constructor(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else _build(loader, node, (), lines, where)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        raise SurgeryError(f"{at}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    return data, lines


def value(text: str, where: str) -> Any:
    """One YAML value (for `--set key=value`), or a one-line error."""
    data, _ = load(text, where)
    return data


def line_of(lines: dict[Path_, int], path: Path_) -> int | str:
    """The line of the deepest prefix of `path` that has one."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return "?"
