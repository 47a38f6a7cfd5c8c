"""The quantization engine: in-place results, ApiQ beats RTN on block MSE, resumable, bad input."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama, tiny_qwen2
from surgery import SurgeryError
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import capture_block_inputs, run_block
from surgery.quantize import QuantConfig, quantize
from surgery.quantize import engine as engine_module
from surgery.quantize.quantizer import fake_quant


def calib(n=16, seqlen=16, seed=0, vocab=99):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def test_rtn_in_place_and_everything_else_untouched():
    model, ref = tiny_llama(), tiny_llama()
    result = quantize(model, QuantConfig(method="rtn", num_bits=3, group_size=8), progress=False)
    assert len(result.layers) == 14
    for (name, p), (_, p0) in zip(model.named_parameters(), ref.named_parameters()):
        module = name.rsplit(".", 1)[0]
        if module in result.layers:
            assert torch.equal(p, fake_quant(p0, 3, 8))
        else:
            assert torch.equal(p, p0), name  # embeddings, norms, lm_head: bit-identical


def test_block_inputs_are_what_the_model_feeds_its_blocks():
    model = tiny_llama()
    ids = calib(4)
    ad = DecoderAdapter(model)
    inputs = capture_block_inputs(ad, ids.split(2))
    hidden = inputs
    for block in ad.layers:
        hidden = hidden.with_hidden(run_block(block, hidden))
    with torch.no_grad():
        ref = model.model(input_ids=ids).last_hidden_state
    got = model.model.norm(torch.cat(hidden.hidden))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def block0_mse(model, ref, ids):
    """MSE of block 0's output on the same (fp) inputs, quantized vs dense."""
    ad, ad0 = DecoderAdapter(model), DecoderAdapter(ref)
    inputs = capture_block_inputs(ad0, ids.split(4))
    out = torch.cat(run_block(ad.layers[0], inputs))
    want = torch.cat(run_block(ad0.layers[0], inputs))
    return float(((out - want) ** 2).mean())


def test_apiq_and_gptq_lower_block_mse_below_rtn():
    ids = calib(16)
    ref = tiny_llama()
    errs = {}
    for method in ("rtn", "gptq", "apiq"):
        model = tiny_llama()
        cfg = QuantConfig(method=method, num_bits=2, group_size=8, batch_size=4, epochs=8, lora_rank=4,
                          lr_lora=1e-3, lr_lwc=1e-2)
        quantize(model, cfg, calib=ids, progress=False)
        errs[method] = block0_mse(model, ref, ids)
    assert errs["apiq"] < 0.8 * errs["rtn"], errs
    assert errs["gptq"] < errs["rtn"], errs


def test_saliency_regulariser_runs_with_its_own_fisher_and_changes_the_result():
    ids = calib(8)
    plain, sal = tiny_qwen2(), tiny_qwen2()
    base = dict(method="apiq", num_bits=2, group_size=8, batch_size=4, epochs=2, lora_rank=2)
    quantize(plain, QuantConfig(**base), calib=ids, progress=False)
    result = quantize(sal, QuantConfig(**base, saliency_lambda=50.0, stages=[["wpt", 1], ["opt", 1]]),
                      calib=ids, progress=False)
    assert "wpt_reg" in result.history[0] and "opt_mse" in result.history[0]
    w = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(plain.get_submodule(w).weight, sal.get_submodule(w).weight)


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    ids = calib(8)
    cfg = dict(method="apiq", num_bits=2, group_size=8, batch_size=4, epochs=2, lora_rank=2)
    full = tiny_llama()
    quantize(full, QuantConfig(**cfg), calib=ids, progress=False)

    real = engine_module._apiq_block
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed in block 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "_apiq_block", dying)
    killed = tiny_llama()
    with pytest.raises(KeyboardInterrupt):
        quantize(killed, QuantConfig(**cfg, resume_dir=str(tmp_path)), calib=ids, progress=False)
    monkeypatch.setattr(engine_module, "_apiq_block", real)
    resumed = tiny_llama()  # a fresh process would start from the dense model again
    result = quantize(resumed, QuantConfig(**cfg, resume_dir=str(tmp_path)), calib=ids, progress=False)
    assert len(result.layers) == 14 and set(result.history) == {0, 1}
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    with pytest.raises(SurgeryError, match="another configuration"):
        quantize(tiny_llama(), QuantConfig(**{**cfg, "epochs": 3}, resume_dir=str(tmp_path)), calib=ids,
                 progress=False)


@pytest.mark.parametrize("kwargs,match", [
    ({"num_bits": 5}, "num_bits must be one of"),
    ({"group_size": 48}, "power of two"),
    ({"group_size": 16}, "does not divide the input width 40"),  # down_proj's input is 40 wide
    ({"targets": ["re:.*nothing.*"]}, "no linear layer to quantize"),
    ({"method": "gptq"}, "empty calibration data"),
    ({"method": "bogus"}, "method must be one of"),
])
def test_bad_input_is_one_clear_error(kwargs, match):
    with pytest.raises(SurgeryError, match=match):
        quantize(tiny_llama(), QuantConfig(**{"num_bits": 4, "group_size": 8, **kwargs}), progress=False)


def test_group_rule_channel_falls_back_per_layer():
    model = tiny_llama()
    result = quantize(model, QuantConfig(method="rtn", num_bits=4, group_size=16, group_rule="channel"),
                      progress=False)
    assert result.layers["model.layers.0.mlp.down_proj"].group_size == 40
    assert result.layers["model.layers.0.mlp.up_proj"].group_size == 16


def test_unknown_config_key_is_refused():
    with pytest.raises(SurgeryError, match=r"unknown quantization option\(s\) \['group'\]"):
        QuantConfig.from_dict({"method": "rtn", "group": 64})
