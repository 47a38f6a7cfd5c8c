"""Structural units and the parameter budget.

Attention units are KV groups — one KV head with all its query heads — so that a KV head only
goes with all its query heads and every layer keeps a standard GQA layout (query heads = KV heads
× group size). FFN units are neurons. The budget's denominator is stated once: the weights of the
decoder-block linear layers (q, k, v, o, gate, up, down), biases excluded.
"""
from __future__ import annotations

from dataclasses import dataclass

from surgery.errors import SurgeryError, require
from surgery.models.adapters import DecoderAdapter


@dataclass(frozen=True)
class Sublayer:
    """One prunable sub-layer: block `layer`, `kind` attn | mlp."""

    layer: int
    kind: str
    units: int  # KV groups or neurons
    unit_cols: int  # input columns of o_proj / down_proj per unit
    unit_params: int  # weights a unit owns across its projections

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.kind}"


@dataclass
class Layout:
    sublayers: list[Sublayer]
    denominator: int  # decoder-block linear weights

    def of_kind(self, kind: str) -> list[Sublayer]:
        return [s for s in self.sublayers if s.kind == kind]

    def removed_params(self, removed: dict[str, int]) -> int:
        return sum(s.unit_params * removed[s.key] for s in self.sublayers)


def layout(adapter: DecoderAdapter) -> Layout:
    subs = []
    hidden = adapter.config.hidden_size
    for i in range(adapter.num_layers):
        shape = adapter.block_shape(i)
        g = shape.num_heads // shape.num_kv_heads
        d = shape.head_dim
        subs.append(Sublayer(i, "attn", shape.num_kv_heads, g * d, (2 * g * d + 2 * d) * hidden))
        subs.append(Sublayer(i, "mlp", shape.intermediate_size, 1, 3 * hidden))
    return Layout(subs, adapter.block_linear_params())


def target_removals(lay: Layout, sparsity: float) -> dict[str, int]:
    """Units to remove per type so each type sits at `sparsity` of its own weights (rounded to
    whole units, spread uniformly; the remainder goes to the first sub-layers)."""
    out = {}
    for kind in ("attn", "mlp"):
        subs = lay.of_kind(kind)
        total_units = sum(s.units for s in subs)
        want = round(sparsity * total_units)
        base, extra = divmod(want, len(subs))
        for j, s in enumerate(subs):
            out[s.key] = min(s.units, base + (1 if j < extra else 0))
    return out


def trade_ratio(lay: Layout) -> int:
    """Neurons that weigh exactly one KV group; an error if no exact trade exists."""
    attn, mlp = lay.of_kind("attn")[0], lay.of_kind("mlp")[0]
    if attn.unit_params % mlp.unit_params:
        raise SurgeryError(f"attention and FFN cannot trade budget exactly: a KV group owns "
                           f"{attn.unit_params} weights, a neuron {mlp.unit_params}")
    return attn.unit_params // mlp.unit_params


def check_budget(lay: Layout, removed: dict[str, int], sparsity: float) -> float:
    """Achieved sparsity of a distribution (it must leave every unit count in range)."""
    for s in lay.sublayers:
        require(0 <= removed[s.key] <= s.units, f"sub-layer {s.key}: {removed[s.key]} of {s.units} units")
    return lay.removed_params(removed) / lay.denominator
