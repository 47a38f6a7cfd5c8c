"""Downstream tasks through lm-eval-harness, offline, on tasks built from local text: a trained model
beats chance and a random one does not; `surgery compare` reports accuracy and its recovery beside
sizes measured from the folders and speed (or why there is none)."""
from __future__ import annotations

import json

import torch

from conftest import tiny_llama
from surgery.cli.main import main
from surgery.data import read_text
from surgery.evaluate.tasks import built_items, run_tasks
from surgery.reference import load_reference

TASK = "wordorder@embedded:test"


def test_built_items_are_what_they_say():
    text = read_text("embedded:test")
    for kind in ("nextline", "wordorder"):
        items = built_items(kind, text)
        assert len(items) == 200
        for it in items:
            assert len(set(it["choices"])) == 4 and 0 <= it["label"] < 4
            answer = it["choices"][it["label"]]
            assert it["context"] in " ".join(text.split()) and answer in " ".join(text.split())
            if kind == "wordorder":
                assert all(sorted(c.replace(" .", "").split()) == sorted(answer.split()) for c in it["choices"])
    assert built_items("wordorder", text) == built_items("wordorder", text)  # seeded


def test_a_trained_model_beats_chance_and_a_random_one_does_not():
    model, tok, _ = load_reference("tiny-lm", progress=False)
    trained = run_tasks(model, tok, [TASK])[TASK]
    torch.manual_seed(0)
    random_model = tiny_llama(vocab_size=model.config.vocab_size, max_position_embeddings=512)
    chance = run_tasks(random_model, tok, [TASK])[TASK]
    assert trained >= 50.0 and chance <= 40.0, (trained, chance)


def test_compare_reports_tasks_sizes_and_speed_reasons(tmp_path, capsys):
    from surgery.quantize import RTNConfig, export, quantize

    model, tok, path = load_reference("tiny-lm", progress=False)
    result = quantize(model, RTNConfig(num_bits=2, group_size=32), progress=False)
    q = export(model, result, tmp_path / "w2", tokenizer=tok)
    capsys.readouterr()
    rc = main(["compare", "--dense", str(path), "--candidate", str(q), "--data", "embedded:test", "--seqlen", "32",
               "--max-windows", "8", "--tasks", TASK, "--out", str(tmp_path / "cmp")])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    dense, cand = data["models"]
    assert dense["metrics"][f"task:{TASK}"] >= 50.0
    assert cand["ratio_to_dense"][f"task:{TASK}"] == cand["metrics"][f"task:{TASK}"] / dense["metrics"][f"task:{TASK}"]
    from surgery.evaluate import size_on_disk

    assert cand["metrics"]["disk_bytes"] == size_on_disk(q) < dense["metrics"]["disk_bytes"]
    assert cand["reasons"] == {"prefill_tok_s": "no fast kernel here", "decode_tok_s": "no fast kernel here"}
    assert 2.0 < cand["metrics"]["bits_per_weight"] < 3.5
