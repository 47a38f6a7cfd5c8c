"""Recipes: strict validation with file:line:key, `surgery run` output folders, nothing left behind."""
from __future__ import annotations

import importlib
import json
import os
import textwrap

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from conftest import tiny_llama
from surgery import SurgeryError
from surgery.cli.main import main
from surgery.data import text
from surgery.models import save_model
from surgery.models.tokenizer import train_bpe
from surgery.recipe import parse, run_recipe

GOOD = """\
calibration:
  data: {corpus}
  nsamples: 8
  seqlen: 32
quant_stage:
  quant_modifiers:
    GPTQModifier:
      num_bits: 4
      group_size: 8
      ignore: [lm_head]
eval_stage:
  data: [{corpus}]
  seqlen: 32
  speed: false
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny"
    save_model(tiny_llama(vocab_size=300), path, tokenizer=train_bpe(text.embedded()["train"].values(), 300))
    return path


@pytest.fixture
def corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text(text.join(text.embedded()["test"])[:8000])
    return f


def write(tmp_path, body, name="r.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def test_run_writes_a_complete_loadable_folder(tmp_path, model_dir, corpus):
    recipe = write(tmp_path, GOOD.format(corpus=corpus))
    out = tmp_path / "out"
    metrics = run_recipe(str(recipe), str(out), model=str(model_dir))
    assert {p.name for p in out.iterdir()} >= {
        "README.md", "config.json", "metrics.json", "model.safetensors", "recipe.yaml", "versions.json"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["stages"][0]["label"] == "gptq W4 g8"
    assert json.loads((out / "versions.json").read_text())["torch"].startswith("2.13")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "base_model_relation: quantized" in card
    assert parse(out / "recipe.yaml").stages[0].config.num_bits == 4  # the resolved recipe re-parses
    # the folder loads with transformers and gives the perplexity the run reported
    from surgery.data.windows import eval_windows, tokenize
    from surgery.evaluate import perplexity
    from surgery.models import load_model

    _, tok = load_model(model_dir)
    windows = eval_windows(tokenize(tok, corpus.read_text()), 32)
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    reported = metrics["comparison"]["models"][1]["metrics"][f"ppl:{corpus}"]
    assert perplexity(back, windows) == pytest.approx(reported, rel=1e-9)
    assert metrics["disk_bytes"]["result"] < metrics["disk_bytes"]["dense"]  # measured from both folders
    assert not (tmp_path / ".out.partial").exists()


def test_set_overrides_a_value(tmp_path, model_dir, corpus):
    recipe = write(tmp_path, GOOD.format(corpus=corpus))
    r = parse(recipe, ["quant_stage.quant_modifiers.GPTQModifier.num_bits=3"])
    assert r.stages[0].config.num_bits == 3
    with pytest.raises(SurgeryError, match="no section 'nope'"):
        parse(recipe, ["nope.x=1"])
    with pytest.raises(SurgeryError, match="--set quant_stage.quant_modifiers.GPTQModifier.num_bits:1: invalid YAML"):
        parse(recipe, ["quant_stage.quant_modifiers.GPTQModifier.num_bits={a: b"])
    with pytest.raises(SurgeryError, match=r"r\.yaml:--set: quant_stage\.quant_modifiers\.GPTQModifier\.num_bits: Input"):
        parse(recipe, ["quant_stage.quant_modifiers.GPTQModifier.num_bits=five"])


@pytest.mark.parametrize("body,match", [
    ("calibration:\n  data: embedded:train\n  nsample: 8\nquant_stage:\n  quant_modifiers:\n    RTNModifier: {}\n",
     r"r\.yaml:3: calibration\.nsample: unknown option; allowed: data, nsamples, seqlen, seed, batch_size"),
    ("quant_stage:\n  quant_modifiers:\n    GPTQModifier:\n      num_bits: four\n",
     r"r\.yaml:4: quant_stage\.quant_modifiers\.GPTQModifier\.num_bits: Input should be 2, 3, 4 or 8 \(got 'four'\)"),
    ("quant_stage:\n  quant_modifiers:\n    GPTQModifer:\n      num_bits: 4\n",
     r"r\.yaml:3: quant_stage\.quant_modifiers\.GPTQModifer: unknown option; allowed: RTNModifier, GPTQModifier"),
    ("quant_stage:\n  quant_modifiers:\n    GPTQModifier:\n      num_bits: 5\n",
     r"r\.yaml:4: quant_stage\.quant_modifiers\.GPTQModifier\.num_bits: Input should be 2, 3, 4 or 8"),
    ("quant_stage:\n  quant_modifiers:\n    ApiQModifier:\n      group_size: 48\n",
     r"r\.yaml:\d: quant_stage: group_size must be a power of two"),
    ("eval_stage:\n  data: notalist\n", r"r\.yaml:2: eval_stage\.data: Input should be a valid list"),
    ("prune_stag: {}\n", r"r\.yaml:1: unknown key 'prune_stag'"),
    ("quant_stage:\n  quant_modifiers: [1, 2]\n  bad: 1\n", r"r\.yaml:2: quant_stage\.quant_modifiers: Input should be"),
    ("quant_stage:\n  quant_modifiers:\n    RTNModifier: {}\n  bad: 1\n", r"r\.yaml:4: quant_stage\.bad: unknown option"),
    ("quant_stage:\n  quant_modifiers:\n    ApiQModifier: {seed: 1}\n    RTNModifier: {}\n",
     r"r\.yaml:1: quant_stage: quant_stage\.quant_modifiers holds exactly one modifier, got RTNModifier, ApiQModifier"),
    ("quant_stage:\n  quant_modifiers:\n    GPTQModifier: {targets: [1]}\n",
     r"r\.yaml:3: quant_stage\.quant_modifiers\.GPTQModifier\.targets\.0: Input should be a valid string"),
    ("quant_stage:\n  quant_modifiers:\n    ApiQModifier: {stages: [[wpt, x]]}\n",
     r"r\.yaml:3: quant_stage\.quant_modifiers\.ApiQModifier\.stages\.0\.1: Input should be a valid integer"),
    ("eval_stage:\n  data: [123]\n", r"r\.yaml:2: eval_stage\.data\.0: Input should be a valid string"),
    ("eval_stage:\n  data: [foo:bar]\n", r"r\.yaml:1: eval_stage: unknown data source 'foo:bar'"),
    ("calibration:\n  data: embedded:test\nquant_stage:\n  quant_modifiers:\n    RTNModifier: {}\n",
     r"calibration data 'embedded:test' is a test split"),
    ("calibration: {batch_size: 0}\nquant_stage:\n  quant_modifiers:\n    RTNModifier: {}\n",
     r"r\.yaml:1: calibration\.batch_size: Input should be greater than 0"),
    ("quant_stage:\n  quant_modifiers:\n    RTNModifier: {}\nquant_stage: {}\n", r"r\.yaml:4: duplicate key 'quant_stage'"),
    ("quant_stage: {\n", r"r\.yaml:\d+: invalid YAML"),
])
def test_bad_recipes_fail_before_any_work(tmp_path, body, match):
    recipe = write(tmp_path, body)
    with pytest.raises(SurgeryError, match=match):
        run_recipe(str(recipe), str(tmp_path / "out"), model="/nonexistent/model")
    assert not (tmp_path / "out").exists()


def _one_line_error(capsys, argv, pattern):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("surgery: error:") and pattern in err[0], err


def test_cli_missing_model_existing_and_unwritable_output(tmp_path, capsys, model_dir, corpus):
    recipe = write(tmp_path, GOOD.format(corpus=corpus))
    _one_line_error(capsys, ["run", recipe, "--model", tmp_path / "nope", "--output", tmp_path / "o"],
                    "model folder not found")
    (tmp_path / "exists").mkdir()
    _one_line_error(capsys, ["run", recipe, "--model", model_dir, "--output", tmp_path / "exists"],
                    "output folder exists")
    blocker = tmp_path / "afile"
    blocker.write_text("a file where a folder should be")
    _one_line_error(capsys, ["run", recipe, "--model", model_dir, "--output", blocker / "o"],
                    "not writable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "corpus.txt", "exists", "r.yaml"]
    assert list((tmp_path / "exists").iterdir()) == []


def test_killed_quantization_resumes_from_its_partial_folder(tmp_path, model_dir, corpus, monkeypatch):
    from surgery.quantize import engine

    body = GOOD.format(corpus=corpus).replace("GPTQModifier", "ApiQModifier") + "      epochs: 1\n"
    body = body.replace("      ignore: [lm_head]\n", "      ignore: [lm_head]\n      lora_rank: 2\n")
    recipe = write(tmp_path, body.replace("eval_stage:\n  data: [{0}]\n  seqlen: 32\n  speed: false\n".format(corpus), ""))
    real, calls = engine._apiq_block, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "_apiq_block", dying)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(str(recipe), str(tmp_path / "out"), model=str(model_dir))
    assert (tmp_path / ".out.partial" / "quant_stage" / "step_0.safetensors").exists()
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(engine, "_apiq_block", real)
    run_recipe(str(recipe), str(tmp_path / "out"), model=str(model_dir))
    run_recipe(str(recipe), str(tmp_path / "fresh"), model=str(model_dir))
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "fresh")
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


def test_every_shipped_recipe_parses():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert recipes
    for r in recipes:
        assert parse(r).stages, r


CHAIN = """\
calibration:
  data: {corpus}
  nsamples: 8
  seqlen: 16
prune_stage:
  prune_modifiers:
    TyrPruningModifier:
      sparsity: 0.25
      search_samples: 8
      iterations: 1
      attn_unit: {attn_unit}
      search: {{generations: 2, offspring: 4, survivors: [2, 1], stage_windows: [2, 4, 8], top_k: 16}}
quant_stage:
  quant_modifiers:
    GPTQModifier:
      num_bits: 4
      group_size: 8
      group_rule: channel
eval_stage:
  data: [{corpus}]
  seqlen: 16
  speed: false
"""


@pytest.mark.parametrize("attn_unit", ["kv_group", "head"])
def test_prune_then_quantize_chain_equals_the_stages_one_by_one(tmp_path, model_dir, corpus, attn_unit):
    """The chained recipe's folder reloads (sliced + compressed-tensors, mixed schemes) to exactly
    what running prune, slice and quantize by hand gives — with KV-group and with query-head units."""
    from surgery.data.windows import calib_windows, eval_windows, tokenize
    from surgery.evaluate import perplexity
    from surgery.models import load_model
    from surgery.prune import PruneConfig, prune
    from surgery.quantize import quantize

    recipe = write(tmp_path, CHAIN.format(corpus=corpus, attn_unit=attn_unit))
    metrics = run_recipe(str(recipe), str(tmp_path / "out"), model=str(model_dir))
    back, tok = load_model(tmp_path / "out")
    assert type(back).__name__.startswith("Sliced") or back.config.intermediate_size < 40

    model, tok = load_model(model_dir)
    ids = tokenize(tok, corpus.read_text())
    pcfg = parse(recipe).stages[0].config
    result = prune(model.eval(), pcfg, calib_windows(ids, 8, 16, 0), calib_windows(ids, 8, 16, 1),
                   progress=False)
    small = result.slice()
    qcfg = parse(recipe).stages[1].config
    quantize(small, qcfg, calib=calib_windows(ids, 8, 16, 0), progress=False)
    windows = eval_windows(ids, 16)
    by_hand = perplexity(small, windows)
    assert "trust_remote_code=True" in (tmp_path / "out" / "README.md").read_text()
    assert perplexity(back, windows) == pytest.approx(by_hand, rel=1e-6)
    reported = metrics["comparison"]["models"][1]["metrics"][f"ppl:{corpus}"]
    assert reported == pytest.approx(by_hand, rel=1e-6)


def test_run_killed_between_stages_resumes_without_redoing_the_finished_stage(tmp_path, model_dir, corpus,
                                                                               monkeypatch):
    """Killed after the prune stage: the rerun restores the supernet and the search from the partial
    folder (no solver call, no new generation) and writes what an uninterrupted run writes."""
    quantize_pkg = importlib.import_module("surgery.quantize")
    from surgery.prune import supernet as supernet_module

    recipe = write(tmp_path, CHAIN.format(corpus=corpus, attn_unit="kv_group"))
    real_quantize = quantize_pkg.quantize

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize_pkg, "quantize", killed)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(str(recipe), str(tmp_path / "out"), model=str(model_dir))
    assert not (tmp_path / "out").exists()
    assert (tmp_path / ".out.partial" / "prune_stage" / "iteration_0" / "search" / "state.json").exists()
    monkeypatch.setattr(quantize_pkg, "quantize", real_quantize)

    real_solver, calls = supernet_module.progressive_prune, {"n": 0}

    def counting(*a, **k):
        calls["n"] += 1
        return real_solver(*a, **k)

    monkeypatch.setattr(supernet_module, "progressive_prune", counting)
    resumed = run_recipe(str(recipe), str(tmp_path / "out"), model=str(model_dir))
    assert calls["n"] == 0  # the prune stage came back from its checkpoints
    assert not (tmp_path / ".out.partial").exists()
    monkeypatch.setattr(supernet_module, "progressive_prune", real_solver)
    fresh = run_recipe(str(recipe), str(tmp_path / "fresh"), model=str(model_dir))
    assert resumed["stages"][0]["per_layer"] == fresh["stages"][0]["per_layer"]
    from surgery.models import load_model

    (a, _), (b, _) = load_model(tmp_path / "out"), load_model(tmp_path / "fresh")  # mixed schemes
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


def test_chain_scores_once_and_every_stage_reuses_the_map(tmp_path, model_dir, corpus, monkeypatch):
    """prune (saliency start, Fisher) → ApiQ + saliency: one scorer call; the quantization stage's F
    is the dense map restricted to the pruned model, and the folder equals doing that by hand."""
    from surgery.data.windows import calib_windows, eval_windows, tokenize
    from surgery.evaluate import perplexity
    from surgery.models import load_model
    from surgery.prune import prune
    from surgery.quantize import quantize
    from surgery.recipe import maps as maps_module
    from surgery.saliency import score

    body = CHAIN.format(corpus=corpus, attn_unit="kv_group").replace(
        "      iterations: 1\n", "      iterations: 1\n      saliency_kind: fisher\n")
    body = body.replace("GPTQModifier:\n      num_bits: 4\n      group_size: 8\n      group_rule: channel\n",
                        "ApiQModifier:\n      num_bits: 2\n      group_size: 8\n      group_rule: channel\n"
                        "      epochs: 1\n      lora_rank: 2\n      saliency: {lam: 10.0}\n")
    recipe = write(tmp_path, body)
    calls = []

    def counting(*a, **k):
        calls.append(k.get("kind"))
        return score(*a, **k)

    monkeypatch.setattr(maps_module, "score", counting)
    metrics = run_recipe(str(recipe), str(tmp_path / "out"), model=str(model_dir))
    assert calls == ["fisher"]
    assert [e["computed"] for e in metrics["saliency_maps"]] == [True, False]

    model, tok = load_model(model_dir)
    ids = tokenize(tok, corpus.read_text())
    windows = calib_windows(ids, 8, 16, 0)
    smap = score(model, list(windows.split(1)), loss="causal_lm", kind="fisher", include=r"\.layers\.",
                 progress=False)
    result = prune(model.eval(), parse(recipe).stages[0].config, windows, calib_windows(ids, 8, 16, 1),
                   progress=False, saliency=smap)
    small = result.slice()
    fisher = result.slice_map(smap)
    fisher.check_model(small)  # names and shapes of the sliced model
    quantize(small, parse(recipe).stages[1].config, calib=windows, fisher=fisher, progress=False)
    back, _ = load_model(tmp_path / "out")
    from peft import PeftModel

    back = PeftModel.from_pretrained(back, str(tmp_path / "out" / "adapter")).eval()
    w = eval_windows(ids, 16)
    assert perplexity(back, w) == pytest.approx(perplexity(small, w), rel=1e-5)


LM_UNLEARN = """\
unlearn_stage:
  data:
    forget: {forget}
    retain: {retain}
    seqlen: 16
    max_windows: 3
    retain_per_forget: {per}
  unlearn_modifiers:
    UnlearnModifier: {{method: graddiff, use_mask: true, density: 0.5, epochs: 1, lr: 1.0e-4, batch_size: 2}}
"""


def test_lm_unlearn_recipe_draws_retain_per_forget_and_rejects_bad_values(tmp_path, model_dir, corpus):
    forget = tmp_path / "forget.txt"
    forget.write_text(text.join(text.embedded()["train"])[:4000])
    recipe = write(tmp_path, LM_UNLEARN.format(forget=forget, retain=corpus, per=3))
    stage = run_recipe(str(recipe), str(tmp_path / "out"), model=str(model_dir))["stages"][0]
    assert stage["windows"] == {"forget": 3, "retain": 9}
    assert stage["after"]["ppl_forget"] > stage["before"]["ppl_forget"]  # gradient ascent on the forget text
    assert "unlearned (graddiff, SalUn mask)" in (tmp_path / "out" / "README.md").read_text()
    bad = write(tmp_path, LM_UNLEARN.format(forget=forget, retain=corpus, per=0), name="bad.yaml")
    with pytest.raises(SurgeryError, match="unlearn_stage.data.retain_per_forget: Input should be greater than 0"):
        run_recipe(str(bad), str(tmp_path / "bad_out"), model=str(model_dir))
    assert not (tmp_path / "bad_out").exists()


def test_leftovers_of_killed_runs_never_block_or_linger(tmp_path, model_dir, corpus, capfd):
    """A kill -9 mid-write leaves `.out.tmp-<pid>-*` and a `.out.partial` of another configuration:
    the next run cleans the first, restarts the stage of the second with a note, and finishes."""
    body = GOOD.format(corpus=corpus).replace("GPTQModifier", "ApiQModifier").replace(
        "      ignore: [lm_head]\n", "      ignore: [lm_head]\n      epochs: 1\n      lora_rank: 2\n")
    first = write(tmp_path, body)
    from surgery.quantize import engine

    real = engine._apiq_block
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    engine._apiq_block = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            run_recipe(str(first), str(tmp_path / "out"), model=str(model_dir))
    finally:
        engine._apiq_block = real
    assert (tmp_path / ".out.partial" / "quant_stage" / "state.json").exists()
    stale = tmp_path / ".out.tmp-999999999-abc"  # a dead process's temporary folder
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    other = write(tmp_path, body.replace("num_bits: 4", "num_bits: 3"), name="other.yaml")
    capfd.readouterr()
    run_recipe(str(other), str(tmp_path / "out"), model=str(model_dir))
    assert "restarting the quantization" in capfd.readouterr().err
    assert not stale.exists() and not (tmp_path / ".out.partial").exists()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["stages"][0]["label"] == "apiq W3 g8"


def test_device_and_dtype_from_the_recipe_and_the_command_line(tmp_path, model_dir, corpus):
    """`dtype: bf16` loads the weights in bf16 and the folder keeps them; `--dtype`/`--device`
    override the recipe and the resolved recipe.yaml says what ran."""
    recipe = write(tmp_path, "device: cpu\ndtype: bf16\n" + GOOD.format(corpus=corpus).replace("GPTQModifier", "RTNModifier")
                   .replace("      ignore: [lm_head]\n", ""))
    assert (parse(recipe).device, parse(recipe).dtype) == ("cpu", "bf16")
    assert main(["run", str(recipe), "--model", str(model_dir), "--output", str(tmp_path / "bf16")]) == 0
    assert yaml.safe_load((tmp_path / "bf16" / "recipe.yaml").read_text())["dtype"] == "bf16"
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert back.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert main(["run", str(recipe), "--model", str(model_dir), "--output", str(tmp_path / "fp32"),
                 "--dtype", "fp32", "--device", "auto"]) == 0
    resolved = yaml.safe_load((tmp_path / "fp32" / "recipe.yaml").read_text())
    assert (resolved["device"], resolved["dtype"]) == ("auto", "fp32")
    ppl = {d: json.loads((tmp_path / d / "metrics.json").read_text())["comparison"]["models"][1]["metrics"][f"ppl:{corpus}"]
           for d in ("bf16", "fp32")}
    assert ppl["bf16"] != ppl["fp32"] and ppl["bf16"] == pytest.approx(ppl["fp32"], rel=0.05)
