"""Every supported architecture (tiny random configs from transformers; tied and untied) through
every engine: scorer == brute force, units own the right rows and columns, RTN / GPTQ / ApiQ export
and pruned folders reload in a fresh Python process — as their model card says, without `surgery` —
to the in-memory model's logits, and SalUn-masked unlearning leaves everything outside the mask
bit-identical."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from archs import ARCHS, VOCAB, tiny, token_batches
from surgery import score
from surgery.export.card import card_code
from surgery.models import DecoderAdapter
from surgery.models.tokenizer import train_bpe
from surgery.prune import PruneConfig, SearchConfig, prune
from surgery.prune.units import layout
from surgery.quantize import ApiQConfig, GPTQConfig, RTNConfig, export, quantize
from surgery.unlearn import UnlearnConfig, unlearn

NAMES = list(ARCHS)
IDS = token_batches(1, 2, 12, seed=7)[0]
CALIB = torch.cat(token_batches(4, 2, 16, seed=3))
QUANT = {"rtn": RTNConfig(num_bits=4, group_size=8), "gptq": GPTQConfig(num_bits=4, group_size=8),
         "apiq": ApiQConfig(num_bits=4, group_size=8, epochs=1, lora_rank=2, saliency={"lam": 1.0})}
PRUNE = PruneConfig(sparsity=0.3, search_samples=4, iterations=1, batch_size=4,
                    search=SearchConfig(generations=2, offspring=4, stage_windows=[2, 4], survivors=[2], top_k=16))
# saved beside the pruned folders (stock and sliced configs), so their cards load a tokenizer too
TEXT = "Once upon a time a little fox found a red ball."
TOKENIZER = train_bpe([TEXT] * 4, 300)
# query-head units, one head per layer: every KV head pair keeps 1 + 2 query heads (unequal groups)
PRUNE_HEADS = PruneConfig(sparsity=1 / 6, attn_unit="head", start="uniform", iterations=0, search_samples=4,
                          batch_size=4, search=PRUNE.search)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.detach().clone()


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Every output kind of every architecture, and the logits each folder must reproduce."""
    root = tmp_path_factory.mktemp("archs")
    expected = {}
    for name in NAMES:
        for method, cfg in QUANT.items():
            model = tiny(name)
            result = quantize(model, cfg, calib=CALIB, batch_size=4, progress=False)
            export(model, result, root / f"{name}-{method}")
            expected[f"{name}-{method}"] = logits(model)
        model = tiny(name)
        result = prune(model, PRUNE, CALIB, CALIB, progress=False)
        expected[f"{name}-pruned"] = logits(model)  # the masked model
        result.save(root / f"{name}-pruned", tokenizer=TOKENIZER)
        model = tiny(name)
        result = prune(model, PRUNE_HEADS, CALIB, CALIB, progress=False)
        expected[f"{name}-heads-pruned"] = logits(model)
        result.save(root / f"{name}-heads-pruned", tokenizer=TOKENIZER)
    return root, expected


LOADER = """
import json, sys
import torch
from safetensors.torch import save_file
jobs = json.loads(sys.argv[1])
ids = torch.tensor(jobs.pop("__ids__"))
text = jobs.pop("__text__")
out, tokens = {}, {}
for folder, code in jobs.items():
    scope, name = {}, folder.rsplit("/", 1)[-1]
    exec(code.replace('path = "' + name + '"', 'path = "' + folder + '"'), scope)
    with torch.no_grad():
        out[name] = scope["model"](input_ids=ids).logits.contiguous()
    if "tokenizer" in scope:
        tokens[name] = scope["tokenizer"](text)["input_ids"]
assert not any(m == "surgery" or m.startswith("surgery.") for m in sys.modules), "the card needed surgery"
save_file(out, sys.argv[2])
print(json.dumps(tokens))
"""


def test_every_output_reloads_in_a_fresh_process_as_its_card_says(outputs, tmp_path):
    root, expected = outputs
    jobs = {str(root / k): card_code((root / k / "README.md").read_text()) for k in expected}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", LOADER,
                           json.dumps({**jobs, "__ids__": IDS.tolist(), "__text__": TEXT}),
                           str(tmp_path / "logits.safetensors")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # no interactive trust_remote_code prompt (a notebook would stop at it) for the model or the tokenizer
    assert "trust_remote_code" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    tokens = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(tokens) == sorted(k for k in expected if k.endswith("pruned"))
    assert all(ids == TOKENIZER(TEXT)["input_ids"] for ids in tokens.values())
    got = load_file(tmp_path / "logits.safetensors")
    for key, want in expected.items():
        tol = 1e-5 if key.endswith(("-apiq", "-pruned")) else 0.0  # PEFT / sliced: float order only
        torch.testing.assert_close(got[key], want, rtol=tol, atol=tol, msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_keep_ties_and_leave_the_head_unquantized(outputs, name):
    root, _ = outputs
    tied = ARCHS[name][1]["tie_word_embeddings"]
    for kind in ("gptq", "pruned"):
        cfg = json.loads((root / f"{name}-{kind}" / "config.json").read_text())
        assert cfg["tie_word_embeddings"] == tied
        weights = load_file(next((root / f"{name}-{kind}").glob("*.safetensors")))
        assert ("lm_head.weight" in weights) == (not tied)  # a tied head is not written twice
    qcfg = json.loads((root / f"{name}-gptq" / "config.json").read_text())["quantization_config"]
    assert "lm_head" in qcfg["ignore"] and not any(k.startswith("lm_head.") and k.endswith("_packed")
                                                   for k in load_file(root / f"{name}-gptq" / "model.safetensors"))


@pytest.mark.parametrize("name", NAMES)
def test_head_unit_folders_keep_unequal_kv_groups(outputs, name):
    """The head-pruned folders (reloaded above as their cards say) really hold layers whose KV heads
    serve different numbers of query heads, and no more weights than the budget leaves."""
    root, _ = outputs
    cfg = json.loads((root / f"{name}-heads-pruned" / "config.json").read_text())
    if name == "olmo2":  # its q/k norms span all heads: attention is not pruned
        assert not any(cfg.get("layer_head_kv", []))
        return
    assert all(len(m) == 3 and sorted(set(m)) == [0, 1] for m in cfg["layer_head_kv"]), cfg["layer_head_kv"]
    assert cfg["layer_num_heads"] == [3, 3] and cfg["layer_num_kv_heads"] == [2, 2]


@pytest.mark.parametrize("name", NAMES)
def test_scorer_equals_brute_force(name):
    model = tiny(name)
    DecoderAdapter(model)  # MoE experts in their per-expert layout first
    batches = token_batches(3, 2, 10)
    got = {k: score(model, batches, kind=k, progress=False) for k in ("grad", "fisher")}
    sums, squares = {}, {}
    for b in batches:
        model.zero_grad()
        logits_ = model(input_ids=b).logits[:, :-1]
        torch.nn.functional.cross_entropy(logits_.reshape(-1, VOCAB), b[:, 1:].reshape(-1)).backward()
        for n, p in model.named_parameters():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            sums[n] = sums.get(n, 0) + g
            squares[n] = squares.get(n, 0) + g * g
    for n in sums:
        torch.testing.assert_close(got["grad"][n], sums[n], rtol=1e-4, atol=1e-7, msg=n)
        torch.testing.assert_close(got["fisher"][n], squares[n], rtol=1e-4, atol=1e-9, msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_units_own_exactly_the_rows_and_columns_that_feed_them(name):
    """Zeroing a unit's output columns makes its input rows irrelevant — and only its rows: zeroing
    them too changes nothing, while zeroing them alone does."""
    model = tiny(name)
    ad = DecoderAdapter(model)
    lay = layout(ad)
    base = logits(model)
    for sub in lay.sublayers:
        us = sub.unit_set
        unit = torch.tensor([us.count - 1])
        cols_only, everything, rows_only = (copy.deepcopy(model) for _ in range(3))
        with torch.no_grad():
            for m, pieces in ((cols_only, [us.output]), (everything, us.pieces),
                              (rows_only, [p for p in us.pieces if p is not us.output])):
                params = dict(m.named_parameters())
                for p in pieces:
                    params[p.param].index_fill_(p.dim, p.index(unit), 0.0)
        a, b, c = logits(cols_only), logits(everything), logits(rows_only)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=str(sub.key))
        assert not torch.allclose(a, base, atol=1e-6) and not torch.allclose(c, base, atol=1e-6), sub.key


@pytest.mark.parametrize("name", NAMES)
def test_salun_masked_unlearning_leaves_the_rest_bit_identical(name):
    model = tiny(name)
    DecoderAdapter(model)
    before = copy.deepcopy(model)
    forget, retain = torch.cat(token_batches(2, 2, 12, seed=11)), torch.cat(token_batches(2, 2, 12, seed=12))
    cfg = UnlearnConfig(method="graddiff", use_mask=True, density=0.3, epochs=1, lr=1e-3, batch_size=2,
                        optimizer="adamw", weight_decay=0.01)
    result = unlearn(model, cfg, forget, retain, progress=False)
    moved = 0
    for (n, p), (_, p0) in zip(model.named_parameters(), before.named_parameters()):
        mask = result.mask[n] if n in result.mask else torch.zeros_like(p, dtype=torch.bool)
        assert torch.equal(p[~mask], p0[~mask]), n
        moved += int((p != p0).sum())
    assert moved > 0


def test_unsupported_model_is_one_line_naming_it():
    from transformers import GPT2Config, GPT2LMHeadModel

    from surgery import SurgeryError

    with pytest.raises(SurgeryError, match=r"unsupported architecture 'gpt2'; supported: llama, mistral, qwen2"):
        DecoderAdapter(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)))


@pytest.mark.parametrize("order", ["surgery first", "transformers first"])
def test_import_surgery_registers_sliced_models_for_plain_from_pretrained(outputs, order):
    root, _ = outputs
    sliced = [p for p in sorted(root.glob("*-pruned"))
              if json.loads((p / "config.json").read_text())["model_type"].startswith("surgery_sliced_")]
    assert sliced, "no heterogeneous pruned folder to load"
    imports = "import surgery\nimport transformers" if order == "surgery first" else "import transformers\nimport surgery"
    code = imports + (f"\nm = transformers.AutoModelForCausalLM.from_pretrained({str(sliced[0])!r})"
                      "\nprint(type(m).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("Sliced")
