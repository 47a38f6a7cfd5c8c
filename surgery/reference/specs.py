"""What each reference model is: architecture, data and training recipe, hashed for the cache."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from surgery.errors import SurgeryError

BUILDER_VERSION = 1  # bump when training code changes what a spec produces


@dataclass(frozen=True)
class LMSpec:
    """A Llama-architecture causal LM (GQA) with its own BPE vocabulary."""

    corpus: str  # "embedded" (ships in the package) or "shakespeare" (needs SURGERY_DATA_DIR)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    seqlen: int
    batch_size: int
    steps: int
    lr: float
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    exclude_works: tuple[str, ...] = ()  # e.g. a play to leave out (the unlearning gold standard)
    kind: str = "lm"


@dataclass(frozen=True)
class VisionSpec:
    """An image classifier from `surgery.models.vision`, trained with SGD + one-cycle LR."""

    dataset: str  # cifar10 | mnist | digits
    arch: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    augment: bool = False
    seed: int = 0
    exclude_classes: tuple[int, ...] = ()
    exclude_index_file: str = ""  # retain-only retraining: train indices to leave out (a .npy)
    kind: str = "vision"
    image_size: int = 0  # > 0: images resized to image_size × image_size (0: native)
    train_subset: int = 0  # > 0: a fixed seeded subset of the training images (the same for every seed)


@dataclass(frozen=True)
class DiffusionSpec:
    """A class-conditional DDPM (diffusers `UNet2DModel`, linear β schedule over 1,000 steps),
    trained with classifier-free label dropout `p_uncond` and an EMA of the weights."""

    dataset: str  # mnist | digits
    image_size: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int = 1
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    p_uncond: float = 0.1
    ema: float = 0.999
    seed: int = 0
    exclude_classes: tuple[int, ...] = ()
    kind: str = "diffusion"


Spec = LMSpec | VisionSpec | DiffusionSpec


def spec_hash(spec: Spec) -> str:
    fields = asdict(spec)
    for added in ("image_size", "train_subset"):  # fields added later: at their defaults, old specs keep
        if isinstance(spec, VisionSpec) and not fields[added]:  # the hashes of their caches
            del fields[added]
    payload = json.dumps({"v": BUILDER_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


REFERENCES: dict[str, Spec] = {
    # Test fixture: seconds to train on the embedded corpus.
    "tiny-lm": LMSpec(corpus="embedded", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, intermediate_size=192, seqlen=64, batch_size=16, steps=150,
                      lr=3e-3, warmup=15),
    # The demo's model: about a minute on 2 cores.
    "demo-lm": LMSpec(corpus="embedded", vocab_size=1024, hidden_size=128, num_layers=4, num_heads=4,
                      num_kv_heads=2, intermediate_size=384, seqlen=128, batch_size=16, steps=250,
                      lr=3e-3, warmup=25),
    # The benchmark LM: 6 layers, hidden 256, 8 query / 4 KV heads, trained on 38 works.
    "shakespeare-lm": LMSpec(corpus="shakespeare", vocab_size=4096, hidden_size=256, num_layers=6,
                             num_heads=8, num_kv_heads=4, intermediate_size=768, seqlen=256,
                             batch_size=16, steps=1200, lr=2e-3, warmup=100),
    "digits-mlp": VisionSpec(dataset="digits", arch={"arch": "mlp", "in_features": 64, "hidden": 128,
                                                      "depth": 2}, epochs=40, batch_size=64, lr=0.05),
    "mnist-cnn": VisionSpec(dataset="mnist", arch={"arch": "small_cnn", "channels": 16, "hidden": 128},
                            epochs=2, batch_size=128, lr=0.05),
    # ResNet-8 (one basic block per stage), widths 16/32/64: ~35 s per epoch on 2 cores.
    "cifar10-resnet": VisionSpec(dataset="cifar10", arch={"arch": "resnet_cifar", "n": 1, "width": 16},
                                 epochs=15, batch_size=128, lr=0.1, augment=True),
    # A classifier that memorises its training set, as SalUn's ResNet-18 does (train acc ≥ 99 %): the
    # ResNet-8 on a fixed 5,000-image CIFAR-10 subset, no augmentation, 60 epochs (minutes per retrain).
    "cifar10-memo": VisionSpec(dataset="cifar10", arch={"arch": "resnet_cifar", "n": 1, "width": 16}, epochs=60,
                               batch_size=128, lr=0.05, train_subset=5000),
    # MNIST at 16×16 px: the judge of generated digits (UA, per-class accuracy, feature FID).
    "mnist16-cnn": VisionSpec(dataset="mnist", arch={"arch": "small_cnn", "channels": 32, "hidden": 128,
                                                      "image_size": 16}, epochs=4, batch_size=128, lr=0.05,
                              image_size=16),
    # Class-conditional DDPMs. Test fixture: 8×8 digits, seconds. Benchmark: MNIST at 16×16 px.
    "digits-ddpm": DiffusionSpec(dataset="digits", image_size=8, block_out_channels=(16, 32), steps=300,
                                 batch_size=64, lr=2e-3, warmup=20),
    "mnist-ddpm": DiffusionSpec(dataset="mnist", image_size=16, block_out_channels=(32, 64, 64), steps=4000,
                                batch_size=64, lr=1e-3),
}


def get_spec(name: str, **overrides: Any) -> Spec:
    """The named spec, with field overrides (e.g. `exclude_works=("romeo_and_juliet",)`)."""
    if name not in REFERENCES:
        raise SurgeryError(f"unknown reference model {name!r}; known: {', '.join(REFERENCES)}")
    spec = REFERENCES[name]
    try:
        return replace(spec, **overrides) if overrides else spec
    except TypeError as e:
        raise SurgeryError(f"bad override for {name}: {e}") from None
