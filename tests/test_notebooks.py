"""The four walkthrough notebooks execute without error on their small settings (nbclient).

Each runs in a fresh kernel with `SURGERY_NOTEBOOK_SMALL=1`; the cells themselves assert what they
show (frozen weights outside the SalUn mask, reload equals the exported model, sliced == masked).
The committed notebooks carry the outputs of the full settings (`python notebooks/make.py --execute`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))
import make  # noqa: E402

from conftest import requires_data  # noqa: E402


@pytest.fixture
def small(monkeypatch, tmp_path):
    monkeypatch.setenv("SURGERY_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    return tmp_path


def run(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert [c.source for c in nb.cells] == [src for _, src in make.NOTEBOOKS[name]], \
        f"{name} is out of date with notebooks/make.py; run `python notebooks/make.py --execute`"
    return make.execute(nb, cwd, timeout=900)


def images(nb: nbformat.NotebookNode) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))


@pytest.mark.parametrize("name,plots", [("quantize_2bit.ipynb", 2), ("prune_50.ipynb", 2)])
def test_lm_notebooks_execute(small, name, plots):
    assert images(run(name, small)) >= plots


@pytest.mark.data
@requires_data()
def test_cifar_unlearning_notebook_executes(small):
    assert images(run("unlearn_cifar10_class.ipynb", small)) >= 2


def test_ddpm_unlearning_notebook_executes(small):
    assert images(run("unlearn_ddpm_mnist.ipynb", small)) >= 2
