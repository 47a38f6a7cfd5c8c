"""Models from where users keep them: a Hub id resolved through the Hugging Face cache laid out on
disk here (no network), offline, by revision; not cached → one line naming the id and the cache."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import tiny_llama
from surgery.data import text
from surgery.models import save_model
from surgery.models.tokenizer import train_bpe

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """HF_HOME with `org/tiny` cached at revision SHA (refs/main → SHA), and a local copy."""
    root = tmp_path_factory.mktemp("hub")
    local = root / "local"
    save_model(tiny_llama(vocab_size=300, max_position_embeddings=256), local,
               tokenizer=train_bpe(text.embedded()["train"].values(), 300))
    repo = root / "home" / "hub" / "models--org--tiny"
    shutil.copytree(local, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    corpus = root / "c.txt"
    corpus.write_text(text.join(text.embedded()["test"])[:6000])
    return root, local, corpus


def cli(hub, *argv):
    root, _, _ = hub
    env = {**os.environ, "HF_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "surgery.cli.main", *map(str, argv)], capture_output=True,
                          text=True, env=env, timeout=300)


def ppl(proc):
    assert proc.returncode == 0, proc.stderr
    return next(iter(json.loads(proc.stdout)["models"][0]["metrics"].values()))


@pytest.mark.parametrize("model_id", ["org/tiny", f"org/tiny@{SHA}"])
def test_a_cached_hub_id_loads_offline_like_the_folder(hub, model_id):
    _, local, corpus = hub
    args = ["--data", corpus, "--seqlen", 16, "--max-windows", 3, "--no-speed", "--json"]
    assert ppl(cli(hub, "eval", "--model", model_id, *args)) == ppl(cli(hub, "eval", "--model", local, *args))


def test_an_uncached_hub_id_offline_is_one_line(hub):
    root, _, corpus = hub
    proc = cli(hub, "eval", "--model", "org/absent", "--data", corpus, "--no-speed")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("surgery: error: cannot resolve model 'org/absent': offline (HF_HUB_OFFLINE) and not "
                               "in the cache; cache searched: " + str(root / "home" / "hub"))
