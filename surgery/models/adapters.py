"""Architecture knowledge, in one place: where a model keeps its blocks, projections and heads.

Engines never match module names; they ask an adapter. `DecoderAdapter` covers Llama, Mistral and
Qwen2-style decoders (GQA included; widths read from the modules, so sliced models work too);
`ClassifierAdapter` covers plain `nn.Module` image classifiers.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from surgery.errors import SurgeryError
from surgery.saliency.structural import LayerLayout

DECODER_TYPES = ("llama", "mistral", "qwen2", "surgery_sliced_llama", "surgery_sliced_mistral",
                 "surgery_sliced_qwen2")
ATTN_ROLES = ("q", "k", "v", "o")
MLP_ROLES = ("gate", "up", "down")
_MODULE = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


@dataclass(frozen=True)
class BlockShape:
    """Unit counts of one decoder block."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int


class DecoderAdapter:
    """Llama / Mistral / Qwen2 causal LMs (`model.model.layers[i].self_attn/mlp.*_proj`)."""

    def __init__(self, model: nn.Module) -> None:
        cfg = getattr(model, "config", None)
        mtype = getattr(cfg, "model_type", None)
        if mtype not in DECODER_TYPES:
            raise SurgeryError(
                f"unsupported architecture {mtype or type(model).__name__!r}; "
                f"supported decoders: {', '.join(DECODER_TYPES)}"
            )
        self.model = model
        self.config = cfg
        self.model_type = mtype
        self.head_dim = int(
            getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        )
        self.prefix = "model.layers"

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def embed_tokens(self) -> nn.Module:
        return self.model.model.embed_tokens

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    def module_name(self, layer: int, role: str) -> str:
        return f"{self.prefix}.{layer}.{_MODULE[role]}"

    def proj(self, layer: int, role: str) -> nn.Linear:
        return _get(self.layers[layer], _MODULE[role])

    def projections(self, layer: int) -> dict[str, nn.Linear]:
        roles = ATTN_ROLES + (MLP_ROLES if self.has_mlp(layer) else ())
        return {r: self.proj(layer, r) for r in roles}

    def linear_names(self) -> list[str]:
        """Module names of every block projection, in forward order."""
        return [self.module_name(i, r) for i in range(self.num_layers) for r in ATTN_ROLES + MLP_ROLES]

    def block_shape(self, layer: int) -> BlockShape:
        """Widths as the modules have them now (a sliced model may differ per layer)."""
        q, k = self.proj(layer, "q"), self.proj(layer, "k")
        mlp = self.layers[layer].mlp
        return BlockShape(
            num_heads=q.out_features // self.head_dim,
            num_kv_heads=k.out_features // self.head_dim,
            head_dim=self.head_dim,
            intermediate_size=mlp.gate_proj.out_features if hasattr(mlp, "gate_proj") else 0,
        )

    def has_mlp(self, layer: int) -> bool:
        return hasattr(self.layers[layer].mlp, "gate_proj")

    def structural_layout(self) -> list[LayerLayout]:
        """Names and unit counts for `surgery.saliency.reduce_structural`."""
        out = []
        for i in range(self.num_layers):
            s = self.block_shape(i)
            names = {r: f"{self.module_name(i, r)}.weight" for r in ATTN_ROLES + MLP_ROLES}
            biases = {
                f"{r}_bias": f"{self.module_name(i, r)}.bias"
                for r in ("q", "k", "v", "gate", "up")
                if self.proj(i, r).bias is not None
            }
            out.append(LayerLayout(**names, **biases, num_heads=s.num_heads,
                                   num_kv_heads=s.num_kv_heads, head_dim=s.head_dim,
                                   intermediate_size=s.intermediate_size))
        return out

    def block_linear_params(self) -> int:
        """Weights of all block projections: the denominator of structural sparsity."""
        return sum(p.weight.numel() for i in range(self.num_layers)
                   for p in self.projections(i).values())


class ClassifierAdapter:
    """A plain `nn.Module` image classifier: its conv/linear layers and its output head."""

    def __init__(self, model: nn.Module) -> None:
        if hasattr(model, "config") and getattr(model.config, "model_type", None):
            raise SurgeryError(
                f"unsupported architecture {model.config.model_type!r}; "
                f"supported decoders: {', '.join(DECODER_TYPES)}"
            )
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
