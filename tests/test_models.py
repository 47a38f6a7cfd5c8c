"""Adapters know the layouts; model folders round-trip with equal outputs."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import tiny_cnn, tiny_llama, tiny_mistral, tiny_qwen2
from surgery import SurgeryError
from surgery.models import ClassifierAdapter, DecoderAdapter, adapter_for, load_model, save_model
from surgery.models.vision import build_vision


@pytest.mark.parametrize("make,kv", [(tiny_llama, 2), (tiny_qwen2, 2), (tiny_mistral, 1)])
def test_decoder_adapter_layout(make, kv):
    model = make()
    ad = adapter_for(model)
    assert isinstance(ad, DecoderAdapter) and ad.num_layers == 2
    shape = ad.block_shape(1)
    assert (shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.intermediate_size) == (4, kv, 8, 40)
    assert ad.output_proj(0, "attn") is model.model.layers[0].self_attn.o_proj
    assert ad.output_proj(1, "mlp") is model.model.layers[1].mlp.down_proj
    assert ad.block_linear_params() == 2 * (32 * 32 * 2 + 2 * 32 * 8 * kv + 3 * 32 * 40)
    pieces = {p.param for p in ad.layout(0).units["kv_groups"].pieces}
    assert ("model.layers.0.self_attn.q_proj.bias" in pieces) == (model.config.model_type == "qwen2")


def test_unsupported_architectures_are_refused():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(SurgeryError, match="unsupported architecture 'gpt2'"):
        adapter_for(gpt2)
    with pytest.raises(SurgeryError, match="no Conv2d/Linear"):
        adapter_for(torch.nn.Sequential(torch.nn.ReLU()))


def test_classifier_adapter_head():
    ad = adapter_for(tiny_cnn())
    assert isinstance(ad, ClassifierAdapter) and ad.head[0] == "fc2" and ad.num_classes == 10


@pytest.mark.parametrize("cfg", [
    {"arch": "resnet_cifar", "n": 1, "width": 8},
    {"arch": "small_cnn", "channels": 4, "hidden": 8},
    {"arch": "mlp", "in_features": 64, "hidden": 16},
])
def test_vision_round_trip_equal_outputs(tmp_path, cfg):
    torch.manual_seed(0)
    model = build_vision(cfg).eval()
    side, ch = {"resnet_cifar": (32, 3), "small_cnn": (28, 1), "mlp": (8, 1)}[cfg["arch"]]
    x = torch.rand(3, ch, side, side)
    save_model(model, tmp_path / "m")
    back, tok = load_model(tmp_path / "m")
    assert tok is None
    assert torch.equal(back.eval()(x), model(x))


def test_decoder_round_trip_and_refuse_overwrite(tmp_path):
    model = tiny_qwen2()
    ids = torch.randint(0, 99, (2, 9))
    save_model(model, tmp_path / "q")
    back, _ = load_model(tmp_path / "q")
    assert torch.equal(back.eval()(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(SurgeryError, match="exists"):
        save_model(model, tmp_path / "q")


def test_failed_save_leaves_nothing(tmp_path):
    class Broken(torch.nn.Linear):
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_model(Broken(2, 2), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
