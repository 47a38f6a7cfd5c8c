"""The quantization engine: in-place results, ApiQ beats RTN on block MSE, resumable, bad input."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama, tiny_qwen2
from surgery import SurgeryError
from surgery.models.adapters import DecoderAdapter
from surgery.models.blockwise import capture_block_inputs, run_block
from surgery.quantize import ApiQConfig, GPTQConfig, RTNConfig, quantize
from surgery.quantize import engine as engine_module
from surgery.quantize.quantizer import fake_quant


def calib(n=16, seqlen=16, seed=0, vocab=99):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def test_rtn_in_place_and_everything_else_untouched():
    model, ref = tiny_llama(), tiny_llama()
    result = quantize(model, RTNConfig(num_bits=3, group_size=8), progress=False)
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
    for i, block in enumerate(ad.layers):
        hidden = hidden.with_hidden(run_block(block, hidden.at(i)), i + 1)
    with torch.no_grad():
        ref = model.model(input_ids=ids).last_hidden_state
    got = model.model.norm(torch.cat(hidden.hidden))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def dies_on_call(real, n: int, calls: dict):
    """`real`, but raising KeyboardInterrupt (a kill) on its n-th call."""
    def wrapped(*args, **kwargs):
        calls["n"] = calls.get("n", 0) + 1
        if calls["n"] == n:
            raise KeyboardInterrupt(f"killed on call {n}")
        return real(*args, **kwargs)
    return wrapped


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
    configs = {"rtn": RTNConfig(num_bits=2, group_size=8), "gptq": GPTQConfig(num_bits=2, group_size=8),
               "apiq": ApiQConfig(num_bits=2, group_size=8, epochs=8, lora_rank=4, lr_lora=1e-3, lr_lwc=1e-2)}
    for method, cfg in configs.items():
        model = tiny_llama()
        quantize(model, cfg, calib=ids, batch_size=4, progress=False)
        errs[method] = block0_mse(model, ref, ids)
    assert errs["apiq"] < 0.8 * errs["rtn"], errs
    assert errs["gptq"] < errs["rtn"], errs


def test_saliency_regulariser_runs_with_its_own_fisher_and_changes_the_result():
    ids = calib(8)
    plain, sal = tiny_qwen2(), tiny_qwen2()
    base = dict(num_bits=2, group_size=8, epochs=2, lora_rank=2)
    quantize(plain, ApiQConfig(**base), calib=ids, batch_size=4, progress=False)
    result = quantize(sal, ApiQConfig(**base, saliency={"lam": 50.0}, stages=[["wpt", 1], ["opt", 1]]),
                      calib=ids, batch_size=4, progress=False)
    assert "wpt_reg" in result.history[0] and "opt_mse" in result.history[0]
    w = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(plain.get_submodule(w).weight, sal.get_submodule(w).weight)


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch, capfd):
    ids = calib(8)
    cfg = ApiQConfig(num_bits=2, group_size=8, epochs=2, lora_rank=2)
    full = tiny_llama()
    quantize(full, cfg, calib=ids, batch_size=4, progress=False)

    real = engine_module._apiq_block
    calls = {"n": 0}
    monkeypatch.setattr(engine_module, "_apiq_block", dies_on_call(real, 2, calls))
    killed = tiny_llama()
    with pytest.raises(KeyboardInterrupt):
        quantize(killed, cfg, calib=ids, batch_size=4, resume_dir=str(tmp_path), progress=False)
    monkeypatch.setattr(engine_module, "_apiq_block", real)
    calls["n"] = 0
    monkeypatch.setattr(engine_module, "_apiq_block", lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1])
    resumed = tiny_llama()  # a fresh process would start from the dense model again
    result = quantize(resumed, cfg, calib=ids, batch_size=4, resume_dir=str(tmp_path), progress=False)
    assert calls["n"] == 1  # only block 1 was trained again
    assert len(result.layers) == 14 and set(result.history) == {0, 1}
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("change", ["config", "calibration", "model"])
def test_a_checkpoint_of_other_inputs_is_not_reused(tmp_path, monkeypatch, capfd, change):
    """Issue 11 §5: the checkpoint is keyed on the model, the windows and the config."""
    ids, cfg = calib(8), GPTQConfig(num_bits=2, group_size=8)
    real = engine_module._gptq_block
    monkeypatch.setattr(engine_module, "_gptq_block", dies_on_call(real, 2, {}))
    with pytest.raises(KeyboardInterrupt):
        quantize(tiny_llama(), cfg, calib=ids, batch_size=4, resume_dir=str(tmp_path), progress=False)
    monkeypatch.setattr(engine_module, "_gptq_block", real)
    other_ids, other_cfg, other_model = ids, cfg, tiny_llama()
    if change == "config":
        other_cfg = GPTQConfig(num_bits=3, group_size=8)
    elif change == "calibration":
        other_ids = calib(8, seed=1)
    else:
        other_model = tiny_llama(seed=1)
    fresh = tiny_llama(seed=1) if change == "model" else tiny_llama()
    quantize(fresh, other_cfg, calib=other_ids, batch_size=4, progress=False)
    capfd.readouterr()
    quantize(other_model, other_cfg, calib=other_ids, batch_size=4, resume_dir=str(tmp_path), progress=False)
    assert "restarting the quantization" in capfd.readouterr().err
    for (n, a), (_, b) in zip(fresh.state_dict().items(), other_model.state_dict().items()):
        assert torch.equal(a, b), n  # block 0 of the other inputs was not taken from the checkpoint


@pytest.mark.parametrize("make,match", [
    (lambda: RTNConfig(num_bits=5), "num_bits: Input should be 2, 3, 4 or 8"),
    (lambda: RTNConfig(group_size=48), "power of two"),
    (lambda: RTNConfig(group_size=16), "does not divide the input width 40"),  # down_proj's input is 40 wide
    (lambda: RTNConfig(targets=["re:.*nothing.*"]), "no linear layer to quantize"),
    (lambda: GPTQConfig(group_size=8), "empty calibration data"),
    (lambda: RTNConfig(group=64), "group: unknown option"),
    (lambda: ApiQConfig(stages=[["wpt", "x"]]), "stages.0.1: Input should be a valid integer"),
    (lambda: "gptq", "no quantization method for str"),
])
def test_bad_input_is_one_clear_error(make, match):
    with pytest.raises(SurgeryError, match=match):
        quantize(tiny_llama(), make(), progress=False)


def test_group_rule_channel_falls_back_per_layer():
    model = tiny_llama()
    result = quantize(model, RTNConfig(num_bits=4, group_size=16, group_rule="channel"), progress=False)
    assert result.layers["model.layers.0.mlp.down_proj"].group_size == 40
    assert result.layers["model.layers.0.mlp.up_proj"].group_size == 16
    assert result.label == "rtn W4 g16; W4 per-channel: 2 of 14 layers"
    everything = quantize(tiny_llama(), RTNConfig(num_bits=4, group_size=128, group_rule="channel"), progress=False)
    assert everything.label == "rtn W4 per-channel"  # the label says what was applied, not what was asked
