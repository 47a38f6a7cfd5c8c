"""The command line: results equal the library's, and bad input fails in one line, exit 2,
leaving nothing behind."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import tiny_llama
from surgery import SaliencyMap, score
from surgery.cli.main import main
from surgery.data import text
from surgery.data.windows import eval_windows, tokenize
from surgery.models import save_model
from surgery.models.tokenizer import train_bpe
from surgery.saliency import MaskSet


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny Llama with a real BPE tokenizer, saved as a model folder."""
    tok = train_bpe(text.embedded()["train"].values(), 300)
    model = tiny_llama(vocab_size=300, max_position_embeddings=256)
    path = tmp_path_factory.mktemp("m") / "tiny"
    save_model(model, path, tokenizer=tok)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    f = tmp_path_factory.mktemp("t") / "corpus.txt"
    f.write_text(text.join(text.embedded()["test"])[:20000])
    return f


def run(capsys, *argv):
    capsys.readouterr()  # drop what fixtures printed
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_score_cli_equals_library(tmp_path, capsys, lm_dir, corpus):
    out = tmp_path / "map.safetensors"
    rc, stdout, err = run(capsys, "score", "--model", lm_dir, "--data", corpus, "--seqlen", 32,
                          "--max-windows", 6, "--batch-size", 2, "--kind", "fisher", "--out", out,
                          "--mask-density", 0.25, "--packed")
    assert rc == 0, err
    from surgery.models import load_model

    model, tok = load_model(lm_dir)
    windows = eval_windows(tokenize(tok, corpus.read_text()), 32, 6)
    ref = score(model.eval(), list(windows.split(2)), kind="fisher", progress=False)
    got = SaliencyMap.load(out, model)
    for n in ref:
        assert torch.equal(got[n], ref[n])
    masks = MaskSet.load(tmp_path / "map.mask.safetensors")
    assert masks.selected == round(0.25 * ref.numel)


def test_eval_cli_prints_perplexity(capsys, lm_dir, corpus):
    rc, stdout, err = run(capsys, "eval", "--model", lm_dir, "--data", corpus, "--seqlen", 32,
                          "--max-windows", 4, "--no-speed", "--json")
    assert rc == 0, err
    data = json.loads(stdout)
    ppl = data["models"][0]["metrics"][f"ppl:{corpus}"]
    assert 100 < ppl < 1000  # an untrained model: near the vocabulary size (300)


def _assert_one_line_error(rc, err, pattern):
    assert rc == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("surgery: error:"), err
    assert pattern in lines[0], lines[0]


def test_missing_model_folder(tmp_path, capsys, corpus):
    out = tmp_path / "map.safetensors"
    rc, _, err = run(capsys, "score", "--model", tmp_path / "nope", "--data", corpus, "--out", out)
    _assert_one_line_error(rc, err, "model folder not found")
    assert not out.exists()


def test_unsupported_architecture(tmp_path, capsys, corpus):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    save_model(gpt2, tmp_path / "gpt2")
    rc, _, err = run(capsys, "score", "--model", tmp_path / "gpt2", "--data", corpus,
                     "--out", tmp_path / "m.safetensors")
    _assert_one_line_error(rc, err, "unsupported architecture 'gpt2'")
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights(tmp_path, capsys, lm_dir, corpus, damage):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(lm_dir, bad)
    w = bad / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) - 1000] if damage == "truncate" else b"junk" * 100)
    rc, _, err = run(capsys, "eval", "--model", bad, "--data", corpus, "--no-speed")
    _assert_one_line_error(rc, err, "corrupt or truncated safetensors")


def test_map_from_another_model(tmp_path, capsys, lm_dir):
    other = tiny_llama(vocab_size=300, intermediate_size=48)
    smap = score(other, [torch.randint(0, 300, (2, 8))], kind="grad", progress=False)
    smap.save(tmp_path / "other.safetensors")
    out = tmp_path / "mask.safetensors"
    rc, _, err = run(capsys, "mask", "--map", tmp_path / "other.safetensors", "--model", lm_dir,
                     "--density", 0.5, "--out", out)
    _assert_one_line_error(rc, err, "another model")
    assert not out.exists()


@pytest.mark.parametrize("density", ["0", "1.5", "-0.2"])
def test_density_outside_range(tmp_path, capsys, lm_dir, corpus, density):
    out = tmp_path / "map.safetensors"
    rc, _, err = run(capsys, "score", "--model", lm_dir, "--data", corpus, "--out", out,
                     "--mask-density", density)
    _assert_one_line_error(rc, err, "(0, 1]")
    assert not out.exists()


def test_empty_data(tmp_path, capsys, lm_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    out = tmp_path / "map.safetensors"
    rc, _, err = run(capsys, "score", "--model", lm_dir, "--data", empty, "--out", out)
    _assert_one_line_error(rc, err, "empty data")
    assert not out.exists()


def test_exit_status_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "surgery.cli.main", "eval", "--model",
                           str(tmp_path / "none"), "--data", "x.txt"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"surgery: error: model folder not found: {tmp_path / 'none'} (")
    assert len(proc.stderr.strip().splitlines()) == 1
