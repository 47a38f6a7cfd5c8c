"""The official SalUn code (OPTML-Group/Unlearn-Saliency, `Classification/`) on our model and split.

No network at run time: the code comes from a local clone (`git clone
https://github.com/OPTML-Group/Unlearn-Saliency`, a work tree or a bare git directory), copied into a
temporary folder that is deleted afterwards; nothing of it is kept in this repository. We call its
own two steps as its README runs them — `generate_mask.save_gradient_ratio` (the saliency map from
|∇ −CE| summed over the forget loader, thresholded into `with_{0.1…1.0}.pt`) and `unlearn.RL` with
that mask (random labels on the forget loader, then the retain loader, every epoch; gradients masked,
masked-out weights restored to θ0 after each step) — with its own optimizer (SGD, momentum, weight
decay, MultiStepLR).

What had to change for it to run here (one line of its files is edited, in the temporary copy):
- Its own import error: `trainer/__init__.py` imports `train_with_rewind`, which `trainer/train.py` no
  longer defines (at commit a6e89fd; gone since "Cleanup codes and update rl."), so neither
  `generate_mask.py` nor `main_random.py` imports. That name is dropped from the import line; nothing
  we call uses it.
- CPU: `torch.Tensor.cuda` is the identity while its code runs (its loops call `.cuda()`).
- torchvision cannot be imported beside this machine's torch wheel; its `utils`/`dataset` modules import
  `torchvision.transforms` and `torchvision.datasets` at module level for data sets it does not use
  here, so a stub `torchvision` (empty classes) is put in `sys.modules` for the import.
- Our data loader: its methods take `data_loaders["forget"/"retain"]` and only iterate them, ask
  their length and deepcopy `.dataset`; `Loader` feeds our `ImageSet` batches (floats in [0, 1]; our
  model normalises inside), reshuffled each pass with a seed.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
import types
from pathlib import Path

import torch

from peers._clone import on_path, temporary_copy


class Loader:
    """What its loops need of a DataLoader, over one of our ImageSets."""

    def __init__(self, data, batch_size: int, seed: int) -> None:
        self.dataset, self.batch_size, self.seed, self.passes = data, batch_size, seed, 0

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        self.passes += 1
        return self.dataset.loader(self.batch_size, shuffle=True, seed=self.seed * 1000 + self.passes)


def _stub_torchvision() -> list[str]:
    """Stub modules put in sys.modules (their names, to remove afterwards)."""
    importlib.import_module("datasets")  # it probes for torchvision on import: let it see the truth first

    class Stub(types.ModuleType):
        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

    names = [n for n in ("torchvision", "torchvision.transforms", "torchvision.datasets") if n not in sys.modules]
    for name in names:
        sys.modules[name] = Stub(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision"].datasets = sys.modules["torchvision.datasets"]
    return names


@contextlib.contextmanager
def official_code(repo: str | Path):
    """Import its `generate_mask` and `unlearn` from a temporary copy; yields (modules, commit)."""
    with temporary_copy(repo, "https://github.com/OPTML-Group/Unlearn-Saliency", "Classification") as (tmp, commit):
        code = str(Path(tmp) / "Classification")
        init = Path(code) / "trainer" / "__init__.py"
        init.write_text(init.read_text().replace(", train_with_rewind", ""))
        stubs = _stub_torchvision()
        cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self
        try:
            with on_path(code):
                mods = types.SimpleNamespace(generate_mask=importlib.import_module("generate_mask"),
                                             unlearn=importlib.import_module("unlearn"))
                yield mods, commit, Path(tmp)
        finally:
            torch.Tensor.cuda = cuda
            for name in stubs:  # later code probing for torchvision must not find the stub
                del sys.modules[name]


def official_salun(model: torch.nn.Module, forget, retain, repo: str | Path, epochs: int, lr: float,
                   density: float, seed: int, batch_size: int = 128, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> dict:
    """Run its mask step then its masked RL on `model` in place; wall time and what it ran."""
    require_density = round(density * 10) / 10
    if abs(require_density - density) > 1e-9:
        raise SystemExit(f"its masks come in steps of 0.1; density {density} is not one")
    with official_code(repo) as (mods, commit, tmp):
        args = argparse.Namespace(
            dataset="cifar10", num_classes=len(forget.classes), unlearn="RL", unlearn_epochs=epochs, unlearn_lr=lr,
            momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, warmup=0, print_freq=10 ** 9,
            decreasing_lr="91,136", rewind_epoch=0, rewind_pth=None, imagenet_arch=False, save_dir=str(tmp))
        torch.manual_seed(seed)
        loaders = {"forget": Loader(forget, batch_size, seed), "retain": Loader(retain, batch_size, seed + 1)}
        t0 = time.perf_counter()
        mods.generate_mask.save_gradient_ratio(loaders, model, torch.nn.CrossEntropyLoss(), args)
        mask = torch.load(Path(tmp) / f"with_{require_density}.pt")
        mods.unlearn.RL(loaders, model, torch.nn.CrossEntropyLoss(), args, mask)
        seconds = time.perf_counter() - t0
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    return {"seconds": seconds, "commit": commit, "mask_density": kept}


__all__ = ["Loader", "official_code", "official_salun"]
