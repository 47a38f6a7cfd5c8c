"""Two real processes (torchrun, gloo on CPU) give the single-process saliency map."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import image_batches, tiny_cnn, tiny_llama, token_batches
from surgery import SaliencyMap, score

pytestmark = pytest.mark.multi_process
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "GLOO_SOCKET_IFNAME": "lo", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_map(got: SaliencyMap, want: SaliencyMap) -> None:
    assert set(got) == set(want)
    assert (got.samples, got.batches) == (want.samples, want.batches)
    for n in want:
        scale = max(float(want[n].abs().max()), 1e-12)
        assert float((got[n] - want[n]).abs().max()) <= 1e-6 * scale, n


def test_two_processes_equal_one(tmp_path):
    torchrun([str(HERE / "scripts" / "score_kinds.py"), str(tmp_path)])
    for kind in ("grad", "abs_grad", "fisher", "taylor"):
        want = score(tiny_llama(), token_batches(n=5), kind=kind, progress=False)
        assert_same_map(SaliencyMap.load(tmp_path / f"llama-{kind}.safetensors"), want)
        want = score(tiny_cnn(), image_batches(n=5), loss="neg_ce", kind=kind, progress=False)
        assert_same_map(SaliencyMap.load(tmp_path / f"cnn-{kind}.safetensors"), want)


def tiny_folder(tmp_path: Path, chars: int) -> tuple[Path, Path]:
    """A tiny Llama folder with its BPE tokenizer, and a corpus of `chars` characters of held-out text."""
    from surgery.data import text
    from surgery.models import save_model
    from surgery.models.tokenizer import train_bpe

    model_dir, corpus = tmp_path / "tiny", tmp_path / "c.txt"
    save_model(tiny_llama(vocab_size=300), model_dir,
               tokenizer=train_bpe(text.embedded()["train"].values(), 300))
    corpus.write_text(text.join(text.embedded()["test"])[:chars])
    return model_dir, corpus


def test_cli_under_torchrun_equals_one_process(tmp_path):
    from surgery.cli.main import main

    model_dir, corpus = tiny_folder(tmp_path, 12000)
    common = ["score", "--model", str(model_dir), "--data", str(corpus), "--seqlen", "32",
              "--max-windows", "7", "--batch-size", "2", "--kind", "abs_grad"]
    assert main(common + ["--out", str(tmp_path / "one.safetensors")]) == 0
    torchrun(["-m", "surgery.cli.main", *common, "--cpu", "--out", str(tmp_path / "two.safetensors")])
    one = SaliencyMap.load(tmp_path / "one.safetensors")
    two = SaliencyMap.load(tmp_path / "two.safetensors")
    assert one.batches == 4 and one.samples == 7
    assert_same_map(two, one)
    assert not torch.equal(two.mask(0.3)["model.layers.0.mlp.up_proj.weight"],
                           torch.zeros(40, 32, dtype=torch.bool))


def test_data_parallel_calibration_equals_one_process(tmp_path):
    """GPTQ Hessians, ApiQ gradients, supernet statistics and search fitness reduced over 2 ranks
    give the 1-process result (up to float summation order)."""
    import json

    from safetensors.torch import load_file

    sys.path.insert(0, str(HERE / "scripts"))
    from calibrate import calibrate

    torchrun([str(HERE / "scripts" / "calibrate.py"), str(tmp_path)])
    two, facts = load_file(tmp_path / "two.safetensors"), json.loads((tmp_path / "two.json").read_text())
    one, want = calibrate()
    assert set(two) == set(one)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    assert facts["distribution"] == want["distribution"]
    assert facts["fitness"] == pytest.approx(want["fitness"], rel=1e-6)
    # each rank held only its half of every batch of 4 windows (checkpointed per rank)
    for folder, key in ((tmp_path / "resume" / "apiq", "q.0"), (tmp_path / "resume" / "gptq", "q.0"),
                        (tmp_path / "resume" / "iteration_0" / "supernet", "acc.0")):
        halves = [load_file(folder / f"inputs.rank{r}.safetensors")[key] for r in (0, 1)]
        assert [h.shape[0] for h in halves] == [2, 2]
        assert not torch.equal(halves[0], halves[1])
        assert json.loads((folder / "state.json").read_text())["world"] == 2


def test_chained_recipe_under_torchrun_equals_one_process(tmp_path):
    """`surgery run` (prune → quantize → export → compare) with 2 ranks writes one folder, whose
    model equals the 1-process run's."""
    import json

    from test_recipe import CHAIN

    from surgery.cli.main import main
    from surgery.models import load_model

    model_dir, corpus = tiny_folder(tmp_path, 8000)
    recipe = tmp_path / "chain.yaml"
    recipe.write_text(CHAIN.format(corpus=corpus, attn_unit="kv_group"))
    args = ["run", str(recipe), "--model", str(model_dir)]
    assert main(args + ["--output", str(tmp_path / "one")]) == 0
    torchrun(["-m", "surgery.cli.main", *args, "--cpu", "--output", str(tmp_path / "two")])
    assert not list(tmp_path.glob(".two*"))  # no partial or temporary folder left behind
    one, _ = load_model(tmp_path / "one")
    two, _ = load_model(tmp_path / "two")
    for (n, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=n)
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m1["stages"][0]["per_layer"] == m2["stages"][0]["per_layer"]
