"""compressed-tensors export: bit-exact dequantization, equal logits after a transformers load,
size within 3% of the theoretical bits, the LoRA adapter through PEFT."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_llama
from surgery.export.compressed import dequantized_weights, packed_bytes
from surgery.quantize import CONFIGS, export, quantize


def quantized(bits, method="rtn", vocab=99, **kw):
    model = tiny_llama(hidden_size=64, intermediate_size=128, vocab_size=vocab)  # every width a multiple of 32
    cfg = CONFIGS[method](num_bits=bits, group_size=32, **kw)
    ids = torch.randint(0, vocab, (8, 16), generator=torch.Generator().manual_seed(0))
    return model, quantize(model, cfg, calib=ids, batch_size=4, progress=False)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_export_round_trip_is_bit_exact(tmp_path, bits):
    model, result = quantized(bits, method="gptq")
    path = export(model, result, tmp_path / "q")
    deq = dequantized_weights(path)
    assert set(deq) == set(result.layers)
    for name, w in deq.items():
        assert torch.equal(w, model.get_submodule(name).weight), name
    back = AutoModelForCausalLM.from_pretrained(path)  # compressed-tensors decompresses on load
    ids = torch.randint(0, 99, (2, 12))
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, model(input_ids=ids).logits)
    qcfg = json.loads((path / "config.json").read_text())["quantization_config"]
    weights = qcfg["config_groups"]["group_0"]["weights"]
    assert (qcfg["format"], weights["num_bits"], weights["group_size"], weights["symmetric"]) == \
        ("pack-quantized", bits, 32, False)
    # size: codes + scales + zero points (+ 8-byte shapes) within 3% of the theory
    theory = result.theoretical_bits(scale_bits=32) / 8
    assert abs(packed_bytes(path) - theory) <= 0.03 * theory


def test_packed_layout_is_compressed_tensors_own(tmp_path):
    """Our packed tensors equal what compressed-tensors' compressor writes for the same grid."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors.torch import load_file

    model, result = quantized(3)
    path = export(model, result, tmp_path / "q")
    saved = load_file(str(path / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj"
    lq = result.layers[name]
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=3, type="int", symmetric=False, group_size=32, strategy="group"))
    offset = 4
    sd = {"weight": model.get_submodule(name).weight.detach().clone(), "weight_scale": lq.scale,
          "weight_zero_point": (lq.zero - offset).to(torch.int8)}
    theirs = PackedQuantizationCompressor.compress(sd, scheme)
    assert torch.equal(theirs["weight_packed"], saved[f"{name}.weight_packed"])
    assert torch.equal(theirs["weight_zero_point"], saved[f"{name}.weight_zero_point"])


def test_upstream_asymmetric_skeleton_bug(tmp_path):
    """Canary for the reason we write `dequantize: true`: transformers 5.24 + compressed-tensors
    0.20 cannot build the compressed skeleton of an asymmetric pack-quantized model. When this
    test starts failing, upstream is fixed and the key can go."""
    model, result = quantized(4)
    path = export(model, result, tmp_path / "q")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["quantization_config"]["dequantize"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="mismatched sizes|size mismatch|ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(path)


def test_lora_adapter_loads_with_peft(tmp_path):
    from peft import PeftModel

    model, result = quantized(2, method="apiq", epochs=2, lora_rank=4, lr_lora=1e-2)
    assert result.lora_params(model) > 0
    path = export(model, result, tmp_path / "q")
    base = AutoModelForCausalLM.from_pretrained(path)
    peft = PeftModel.from_pretrained(base, str(path / "adapter")).eval()
    ids = torch.randint(0, 99, (2, 12))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        torch.testing.assert_close(peft(input_ids=ids).logits, ours, rtol=1e-5, atol=1e-5)
        plain = AutoModelForCausalLM.from_pretrained(path)  # PEFT wrapped `base` in place
        assert not torch.allclose(plain(input_ids=ids).logits, ours, atol=1e-4)  # the adapter matters


def test_export_refuses_an_existing_folder_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    from surgery import SurgeryError
    from surgery.export import safetensors_dir as export_module

    model, result = quantized(4)
    (tmp_path / "exists").mkdir()
    with pytest.raises(SurgeryError, match="exists"):
        export(model, result, tmp_path / "exists")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "save_file", boom)
    with pytest.raises(OSError):
        export(model, result, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "save_file", full)
    with pytest.raises(SurgeryError, match="no space left on the device while writing .*new; nothing was kept"):
        export(model, result, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_merge_lora_leaves_no_adapter_and_weights_on_the_grid(tmp_path):
    model, result = quantized(2, method="apiq", epochs=2, lora_rank=4, lr_lora=1e-2, merge_lora=True)
    assert result.lora_params(model) == 0
    path = export(model, result, tmp_path / "m")
    assert not (path / "adapter").exists()
    for name, w in dequantized_weights(path).items():
        assert torch.equal(w, model.get_submodule(name).weight), name
    assert "adapter" not in (path / "README.md").read_text().lower().split("## how to load")[1].split("##")[0]


def test_eval_attaches_the_adapter_and_counts_its_bytes(tmp_path, capsys):
    from surgery.cli.main import main
    from surgery.data import text
    from surgery.evaluate import perplexity
    from surgery.models import save_model
    from surgery.models.tokenizer import train_bpe

    tok = train_bpe(text.embedded()["train"].values(), 300)
    model, result = quantized(2, method="apiq", vocab=300, epochs=2, lora_rank=4, lr_lora=1e-2)
    path = export(model, result, tmp_path / "q", tokenizer=tok)
    corpus = tmp_path / "c.txt"
    corpus.write_text(text.join(text.embedded()["test"])[:3000])
    capsys.readouterr()
    assert main(["eval", "--model", str(path), "--data", str(corpus), "--seqlen", "16", "--no-speed", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["models"][0]["metrics"]
    from surgery.data.windows import eval_windows, tokenize

    want = perplexity(model, eval_windows(tokenize(tok, corpus.read_text()), 16))
    assert got[f"ppl:{corpus}"] == pytest.approx(want, rel=1e-5)  # the adapter was attached
    adapter = sum(f.stat().st_size for f in (path / "adapter").iterdir())
    assert got["disk_bytes"] >= (path / "model.safetensors").stat().st_size + adapter
