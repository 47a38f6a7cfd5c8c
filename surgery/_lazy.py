"""Lazy package attributes (PEP 562): a package names what it offers; the module holding each
name is imported on first use, so `import surgery` and the CLI's argument checks stay light."""
from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy(package: str, **modules: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, given `submodule="Name1 Name2 ..."`."""
    names = {name: sub for sub, listed in modules.items() for name in listed.split()}

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__


def verb(package: str, module: str, name: str) -> None:
    """Make `package` callable as its verb (`surgery.quantize(model, config, ...)` calls
    `surgery.quantize.engine.quantize`) while it stays the package (`surgery.quantize.engine`)."""
    import sys
    import types

    class Verb(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(import_module(f"{package}.{module}"), name)(*args, **kwargs)

    sys.modules[package].__class__ = Verb
