"""surgery — weight-saliency model surgery: one gradient scorer, three engines.

    import surgery
    smap = surgery.score(model, batches, loss="causal_lm", kind="fisher")
    masks = smap.mask(0.5)                              # exact top-50% by |score|
    result = surgery.quantize(model, surgery.GPTQConfig(num_bits=4), calib=windows)
    result = surgery.prune(model, surgery.PruneConfig(sparsity=0.5), calib=windows)
    result = surgery.unlearn(model, surgery.UnlearnConfig(method="salun"), forget=f, retain=r)

`import surgery` is light: the engines load on first use. It also registers the sliced decoders
(`surgery_sliced_*`) with transformers' Auto classes — as soon as transformers is imported, before
or after surgery — so pruned folders load with `AutoModelForCausalLM.from_pretrained`.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

from surgery._lazy import lazy
from surgery._version import __version__
from surgery.errors import SurgeryError

__getattr__, __dir__ = lazy(
    __name__,
    saliency="KINDS MaskSet SaliencyMap StructuralScores score",
    quantize="ApiQConfig GPTQConfig RTNConfig SaliencyRegulariser",
    prune="PruneConfig SearchConfig",
    unlearn="UnlearnConfig",
    **{"models.structural": "structural_scores"},
)
# The engine packages are light to import and callable as their verbs: `surgery.quantize(model,
# config, calib=...)` runs `surgery.quantize.engine.quantize`, and `surgery.quantize.engine` stays the module.
from surgery import prune, quantize, unlearn  # noqa: E402


def _register_sliced() -> None:
    import surgery.models.sliced  # noqa: F401  (AutoConfig / AutoModelForCausalLM registration)


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Registers the sliced decoders right after `transformers` is first imported."""

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            run(module)
            _register_sliced()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "transformers" in sys.modules:
    _register_sliced()
elif not any(isinstance(f, _AfterTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTransformers())

__all__ = ["KINDS", "ApiQConfig", "GPTQConfig", "MaskSet", "PruneConfig", "RTNConfig", "SaliencyMap",
           "SaliencyRegulariser", "SearchConfig", "StructuralScores", "SurgeryError", "UnlearnConfig",
           "__version__", "prune", "quantize", "score", "structural_scores", "unlearn"]
