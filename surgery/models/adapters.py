"""Architecture knowledge, in one place: where a model keeps its blocks, projections and units.

Engines never match module names; they ask an adapter. `DecoderAdapter` reads the layout of a
causal LM from its module tree and config: the decoder blocks, each block's attention projections
(`q/k/v_proj` or a fused `qkv_proj`, and `o_proj`), its MLP projections (`gate/up_proj` or a fused
`gate_up_proj`, and `down_proj`), MoE experts (unfused into one `nn.Linear` per projection, the
checkpoint layout) and routers, the head dimension and the KV groups, and whether the input and
output embeddings are tied. `ClassifierAdapter` covers plain `nn.Module` image classifiers.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from surgery.errors import SurgeryError
from surgery.models.catalog import SUPPORTED, base_type, unsupported
from surgery.saliency.structural import BlockLayout, Piece, UnitSet

# Attention heads cannot be pruned where a norm spans all heads of a projection (the remaining
# heads would be normalised differently than in the masked model).
_HEADWIDE_NORM = {"olmo2": "its q/k norms span all heads"}


def text_config(config: object) -> object:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


@dataclass(frozen=True)
class BlockShape:
    """Unit counts of one decoder block."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_experts: int = 0


@dataclass(frozen=True)
class _Attention:
    q: str | None
    k: str | None
    v: str | None
    qkv: str | None
    o: str


@dataclass(frozen=True)
class _MLP:
    gate: str | None
    up: str | None
    gate_up: str | None
    down: str


def _child(module: nn.Module, *names: str) -> str | None:
    for n in names:
        if isinstance(getattr(module, n, None), nn.Module):
            return n
    return None


class DecoderAdapter:
    """A decoder-only causal LM from the supported families (see `SUPPORTED`)."""

    def __init__(self, model: nn.Module) -> None:
        cfg = getattr(model, "config", None)
        mtype = getattr(cfg, "model_type", None)
        if base_type(mtype) not in SUPPORTED:
            raise unsupported(mtype or type(model).__name__)
        self.model = model
        self.config = cfg
        self.model_type = mtype
        self.base_type = base_type(mtype)
        tc = text_config(cfg)
        self.hidden_size = int(tc.hidden_size)
        self.head_dim = int(getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads)
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise unsupported(mtype, "no decoder layers found")
        self.decoder = decoder
        self.prefix = next(n for n, m in model.named_modules() if m is layers)
        from surgery.models.moe import unfuse_experts

        unfuse_experts(model)  # per-expert nn.Linear modules (the checkpoint layout), same forward
        self._attn = [self._read_attention(i, layer) for i, layer in enumerate(layers)]

    # -- module tree ------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def embed_tokens(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def tied(self) -> bool:
        """Input and output embeddings share one tensor."""
        head = self.lm_head
        return head is not None and head.weight is self.embed_tokens.weight

    def _read_attention(self, i: int, layer: nn.Module) -> _Attention:
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            raise unsupported(self.model_type, f"block {i} has no self_attn")
        q, k, v = _child(attn, "q_proj"), _child(attn, "k_proj"), _child(attn, "v_proj")
        qkv, o = _child(attn, "qkv_proj"), _child(attn, "o_proj")
        if o is None or not ((q and k and v) or qkv):
            raise unsupported(self.model_type, f"block {i}: attention projections not recognised")
        return _Attention(q, k, v, qkv, o)

    def _mlp_module(self, i: int) -> nn.Module | None:
        return getattr(self.layers[i], "mlp", None)

    def _read_mlp(self, mlp: nn.Module | None) -> _MLP | None:
        """A dense gated MLP's projections, or None (no neurons left, or a MoE block)."""
        if mlp is None or _child(mlp, "down_proj") is None:
            return None
        gate, up, gate_up = _child(mlp, "gate_proj"), _child(mlp, "up_proj"), _child(mlp, "gate_up_proj")
        if not ((gate and up) or gate_up):
            raise unsupported(self.model_type, "MLP projections not recognised")
        return _MLP(gate, up, gate_up, "down_proj")

    def is_moe(self, i: int) -> bool:
        return isinstance(getattr(self._mlp_module(i), "experts", None), nn.ModuleList)

    def block_name(self, i: int) -> str:
        return f"{self.prefix}.{i}"

    def attn_name(self, i: int, role: str) -> str:
        """Module name of `q`, `k`, `v`, `qkv` or `o` in block i (None-safe: role must exist)."""
        return f"{self.block_name(i)}.self_attn.{getattr(self._attn[i], role)}"

    def mlp(self, i: int) -> _MLP | None:
        return self._read_mlp(self._mlp_module(i))

    def mlp_name(self, i: int, role: str) -> str:
        return f"{self.block_name(i)}.mlp.{getattr(self.mlp(i), role)}"

    def output_proj(self, i: int, kind: str) -> nn.Linear:
        """The sub-layer's output projection: `o_proj` (kind `attn`) or `down_proj` (`mlp`)."""
        name = self.attn_name(i, "o") if kind == "attn" else self.mlp_name(i, "down")
        return self.model.get_submodule(name)

    def has_mlp(self, i: int) -> bool:
        return self.mlp(i) is not None

    def block_linears(self, i: int) -> dict[str, nn.Linear]:
        """Every nn.Linear of block i (MoE experts included, routers are not Linear), full names."""
        block = self.block_name(i)
        return {f"{block}.{n}": m for n, m in self.layers[i].named_modules() if isinstance(m, nn.Linear)}

    def router_names(self, i: int) -> list[str]:
        mlp = self._mlp_module(i)
        if not self.is_moe(i):
            return []
        return [f"{self.block_name(i)}.mlp.{n}" for n in ("gate", "router") if hasattr(mlp, n)]

    def attention_params(self, i: int) -> list[str]:
        a = self._attn[i]
        roles = ("qkv", "o") if a.qkv else ("q", "k", "v", "o")
        return [f"{self.attn_name(i, r)}.weight" for r in roles]

    def mlp_params(self, i: int) -> list[str]:
        block = f"{self.block_name(i)}.mlp."
        return [n for n, p in self.model.named_parameters() if n.startswith(block) and p.dim() >= 2]

    # -- shapes and units -------------------------------------------------------------------
    def _linear(self, name: str) -> nn.Linear:
        return self.model.get_submodule(name)

    def block_shape(self, i: int) -> BlockShape:
        """Widths as the modules have them now (a sliced model may differ per layer)."""
        a, d = self._attn[i], self.head_dim
        if a.qkv:
            o_in = self._linear(self.attn_name(i, "o")).in_features
            heads = o_in // d
            kv = (self._linear(self.attn_name(i, "qkv")).out_features - o_in) // (2 * d)
        else:
            heads = self._linear(self.attn_name(i, "q")).out_features // d
            kv = self._linear(self.attn_name(i, "k")).out_features // d
        m = self.mlp(i)
        inter = self._linear(self.mlp_name(i, "down")).in_features if m is not None else 0
        experts = len(self._mlp_module(i).experts) if self.is_moe(i) else 0
        return BlockShape(heads, kv, d, inter, experts)

    def _attention_units(self, i: int, s: BlockShape) -> dict[str, UnitSet]:
        a, d = self._attn[i], self.head_dim
        g = s.num_heads // s.num_kv_heads
        params = dict(self.model.named_parameters())

        def rows(role: str, start: int, width: int, units: int) -> list[Piece]:
            name = self.attn_name(i, role)
            out = [Piece(f"{name}.weight", 0, start, width, units)]
            if f"{name}.bias" in params:
                out.append(Piece(f"{name}.bias", 0, start, width, units))
            return out

        o = self.attn_name(i, "o")
        if a.qkv:
            q_at, k_at, v_at = ("qkv", 0), ("qkv", s.num_heads * d), ("qkv", (s.num_heads + s.num_kv_heads) * d)
        else:
            q_at, k_at, v_at = ("q", 0), ("k", 0), ("v", 0)
        heads_out = Piece(f"{o}.weight", 1, 0, d, s.num_heads)
        groups_out = Piece(f"{o}.weight", 1, 0, g * d, s.num_kv_heads)
        reason = _HEADWIDE_NORM.get(self.base_type, "")
        heads = UnitSet("heads", i, s.num_heads, (*rows(q_at[0], q_at[1], d, s.num_heads), heads_out), heads_out,
                        prunable=False, reason="query heads go with their KV group")
        if (getattr(self.config, "layer_head_kv", None) or [[]] * (i + 1))[i]:  # KV heads of unequal groups
            return {"heads": heads, "kv_groups": UnitSet("kv_groups", i, s.num_kv_heads, (), None, prunable=False,
                                                         reason="its KV heads serve unequal numbers of query heads")}
        groups = UnitSet("kv_groups", i, s.num_kv_heads,
                         (*rows(q_at[0], q_at[1], g * d, s.num_kv_heads), *rows(k_at[0], k_at[1], d, s.num_kv_heads),
                          *rows(v_at[0], v_at[1], d, s.num_kv_heads), groups_out), groups_out,
                         prunable=not reason, reason=reason)
        return {"heads": heads, "kv_groups": groups}

    def _mlp_units(self, i: int, s: BlockShape) -> UnitSet:
        m, n = self.mlp(i), s.intermediate_size
        if m is None:
            reason = "a MoE block (experts are not pruned)" if self.is_moe(i) else "no neuron left"
            return UnitSet("neurons", i, 0, (), None, prunable=False, reason=reason)
        params = dict(self.model.named_parameters())
        pieces = []
        at = [("gate_up", 0), ("gate_up", n)] if m.gate_up else [("gate", 0), ("up", 0)]
        for role, start in at:
            name = self.mlp_name(i, role)
            pieces.append(Piece(f"{name}.weight", 0, start, 1, n))
            if f"{name}.bias" in params:
                pieces.append(Piece(f"{name}.bias", 0, start, 1, n))
        out = Piece(f"{self.mlp_name(i, 'down')}.weight", 1, 0, 1, n)
        return UnitSet("neurons", i, n, (*pieces, out), out)

    def layout(self, i: int) -> BlockLayout:
        s = self.block_shape(i)
        return BlockLayout(i, {**self._attention_units(i, s), "neurons": self._mlp_units(i, s)})

    def structural_layout(self) -> list[BlockLayout]:
        return [self.layout(i) for i in range(self.num_layers)]

    def block_linear_params(self) -> int:
        """Weights of all block projections (experts included, routers not): the denominator of
        structural sparsity."""
        return sum(m.weight.numel() for i in range(self.num_layers) for m in self.block_linears(i).values())


class ClassifierAdapter:
    """A plain `nn.Module` image classifier: its conv/linear layers and its output head."""

    def __init__(self, model: nn.Module) -> None:
        if getattr(getattr(model, "config", None), "model_type", None):
            raise unsupported(model.config.model_type)
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not layers:
            raise SurgeryError(f"{type(model).__name__} has no Conv2d/Linear layer to work on")
        self.model = model
        self.layers = layers

    @property
    def head(self) -> tuple[str, nn.Linear]:
        """The last Linear layer (the classifier head)."""
        for name, m in reversed(self.layers):
            if isinstance(m, nn.Linear):
                return name, m
        raise SurgeryError(f"{type(self.model).__name__} has no Linear head")

    @property
    def num_classes(self) -> int:
        return self.head[1].out_features


def adapter_for(model: nn.Module) -> DecoderAdapter | ClassifierAdapter:
    """The adapter for `model`, or a one-line error for an unsupported architecture."""
    if getattr(getattr(model, "config", None), "model_type", None) is not None:
        return DecoderAdapter(model)
    return ClassifierAdapter(model)


def is_language_model(model: nn.Module) -> bool:
    return isinstance(adapter_for(model), DecoderAdapter)
