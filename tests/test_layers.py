"""The package's structure as DESIGN.md states it, checked on the source: imports only point down a
layer (never up, never between engines), no module grows past ~400 lines, no pickle loading."""
from __future__ import annotations

import ast
from pathlib import Path

import surgery

ROOT = Path(surgery.__file__).parent
# layer of each top-level module or package; a module may import its own layer or lower ones
LAYERS = {
    "_version": 0, "_lazy": 0, "errors": 0, "io": 0, "dist": 0, "shards": 0, "log": 0, "config": 0, "checkpoint": 0,
    "linalg": 0,
    "saliency": 1,
    "models": 2, "data": 2, "train": 2, "diffusion": 2,
    "export": 3, "evaluate": 3,
    "quantize": 4, "prune": 4, "unlearn": 4, "reference": 4,
    "recipe": 5, "cli": 5,
}
# packages of one layer that must not import each other (engines know no other engine)
SIDEWAYS = {"quantize", "prune", "unlearn", "reference", "export", "evaluate"}
MAX_LINES = 400


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "surgery" and node.level == 0:
            out += [(node.lineno, f"surgery.{a.name}") for a in node.names]  # from surgery import dist
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return [(line, m) for line, m in out if m == "surgery" or m.startswith("surgery.")]


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT)


def test_imports_point_down_and_never_sideways_between_engines():
    bad = []
    for path in modules():
        me = _part(path)
        for line, mod in _imports(path):
            parts = mod.split(".")
            if len(parts) == 1:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the root package")
                continue
            other = parts[1]
            if other == me:
                continue
            if LAYERS[other] > LAYERS[me]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} (layer {LAYERS[other]} above {LAYERS[me]})")
            elif LAYERS[other] == LAYERS[me] and me in SIDEWAYS and other in SIDEWAYS:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} sideways")
    assert bad == []


def test_every_module_is_in_a_layer_and_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules()}
    assert {_part(ROOT / p) for p in sizes} <= set(LAYERS)
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_the_root_exports_the_verbs_and_configs_and_stays_light():
    import subprocess
    import sys

    code = ("import sys, surgery\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
            "import surgery.quantize.engine, surgery.prune.engine, surgery.unlearn.engine\n"
            "for verb in ('score', 'quantize', 'prune', 'unlearn'):\n"
            "    assert callable(getattr(surgery, verb)), verb\n"
            "import surgery.quantize.engine as e\n"  # the verbs are the packages, callable
            "assert surgery.quantize.engine is e and callable(surgery.quantize)\n"
            "for cfg in ('RTNConfig', 'GPTQConfig', 'ApiQConfig', 'PruneConfig', 'SearchConfig', 'UnlearnConfig'):\n"
            "    assert isinstance(getattr(surgery, cfg), type), cfg\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
