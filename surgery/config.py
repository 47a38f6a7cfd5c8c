"""Engine configs: pydantic dataclasses — one source of truth for names, types, ranges, defaults.

`@config_class` makes a strict dataclass (unknown keys refused, no silent coercion of scalars)
whose bad values raise `SurgeryError` in one line. Recipes validate their YAML against the same
classes (`validate`), so a recipe key is exactly a config field.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, Strict, StrictBool, StrictStr, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from surgery.errors import SurgeryError

Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Float = Annotated[float, Strict()]
NonNegFloat = Annotated[float, Strict(), Field(ge=0)]
PosFloat = Annotated[float, Strict(), Field(gt=0)]
Unit = Annotated[float, Strict(), Field(ge=0, le=1)]
Bool = StrictBool
Str = StrictStr

T = TypeVar("T")
_CONFIG = ConfigDict(extra="forbid")


def describe(e: ValidationError, where: str = "") -> str:
    """The first error of `e` as `where.key: message (got VALUE)`."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    key = f"{where}.{loc}" if where and loc else (where or loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "unexpected_keyword_argument" or err["type"] == "extra_forbidden":
        msg = "unknown option"
    got = f" (got {err['input']!r})" if "input" in err and err["type"] not in (
        "unexpected_keyword_argument", "extra_forbidden", "missing", "dataclass_type") else ""
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{key}: {msg}{got}{more}"


def config_class(cls: type[T]) -> type[T]:
    """A pydantic dataclass whose construction errors are one-line `SurgeryError`s."""
    dc = pydantic_dataclass(cls, config=_CONFIG)
    init = dc.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as e:
            raise SurgeryError(describe(e, cls.__name__)) from None

    __init__.__doc__ = init.__doc__
    dc.__init__ = __init__
    return dc


def validate(cls: type[T], data: Any, where: str = "") -> T:
    """Build `cls` from a mapping (a recipe section), or raise `ValidationError` (for line numbers)."""
    return TypeAdapter(cls).validate_python(data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able fields (nested configs included)."""
    return TypeAdapter(type(cfg)).dump_python(cfg, mode="json")


def replace(cfg: T, **changes: Any) -> T:
    return dataclasses.replace(cfg, **changes)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
