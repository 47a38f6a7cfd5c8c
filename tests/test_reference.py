"""Reference models: real data, real accuracy; cached by spec hash; a killed build resumes exactly."""
from __future__ import annotations

import pytest
import torch

from surgery.reference import build, get_spec, info, load_reference, reference_path
from surgery.reference import train_lm as train_lm_module


def test_digits_mlp_reaches_real_accuracy():
    path = build("digits-mlp", progress=False)
    q = info(path)["quality"]
    assert q["test_acc"] >= 95.0, q
    model, tok, again = load_reference("digits-mlp", progress=False)
    assert again == path and tok is None
    from surgery.data.images import digits
    from surgery.evaluate import accuracy

    assert accuracy(model, digits("test")) == pytest.approx(q["test_acc"], abs=1e-9)


def test_tiny_lm_learns_and_is_cached():
    path = build("tiny-lm", progress=False)
    meta = info(path)
    assert meta["quality"]["ppl_test"] < 120  # an untrained model sits near the vocabulary (512)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build("tiny-lm", progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert reference_path("tiny-lm", seed=1) != path  # another spec, another folder


def test_killed_lm_build_resumes_to_the_same_weights(tmp_path, monkeypatch):
    spec = get_spec("tiny-lm", steps=130)
    full, _, _ = train_lm_module.train_lm(spec, None, tmp_path / "a", progress=False, evaluate=False)

    calls = {"n": 0}
    real_loss = train_lm_module.causal_lm_loss

    def dying_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 115:
            raise KeyboardInterrupt("killed")
        return real_loss(model, batch)

    monkeypatch.setattr(train_lm_module, "causal_lm_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train_lm_module.train_lm(spec, None, tmp_path / "b", progress=False, evaluate=False)
    assert (tmp_path / "b" / "train_state.json").exists()  # step-100 checkpoint (safetensors + JSON)
    monkeypatch.setattr(train_lm_module, "causal_lm_loss", real_loss)
    resumed, _, _ = train_lm_module.train_lm(spec, None, tmp_path / "b", progress=False, evaluate=False)
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


def test_a_planted_pickle_in_the_cache_is_never_loaded(tmp_path, monkeypatch):
    """A writable cache must not run code: resume state is safetensors + JSON, and a pickle beside
    it is ignored."""
    import pickle
    import subprocess

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    work = tmp_path / "w"
    work.mkdir()
    (work / "ckpt.pt").write_bytes(pickle.dumps(Evil()))
    spec = get_spec("tiny-lm", steps=3)
    train_lm_module.train_lm(spec, None, work, progress=False, evaluate=False)
    assert not marker.exists()


def test_no_unsafe_pickle_loading_in_the_package():
    import pathlib

    import surgery

    root = pathlib.Path(surgery.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if "weights_only=False" in p.read_text() or "torch.load(" in p.read_text()]
    assert offenders == []
