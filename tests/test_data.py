"""Text and image loaders, evaluation and calibration windows."""
from __future__ import annotations

import random

import pytest
import torch

from conftest import requires_data
from surgery import SurgeryError
from surgery.data import images, text
from surgery.data.sources import parse_source, read_text
from surgery.data.windows import calib_windows, eval_windows


def test_eval_windows_drop_the_remainder():
    ids = torch.arange(103)
    w = eval_windows(ids, 10)
    assert w.shape == (10, 10) and torch.equal(w.reshape(-1), ids[:100])
    assert eval_windows(ids, 10, max_windows=3).shape == (3, 10)
    with pytest.raises(SurgeryError, match="fewer than one window"):
        eval_windows(torch.arange(5), 10)


def test_calib_windows_follow_gptq_sampler():
    ids = torch.arange(1000)
    w = calib_windows(ids, 4, 16, seed=3)
    rng = random.Random(3)
    starts = [rng.randint(0, 1000 - 16 - 1) for _ in range(4)]
    assert torch.equal(w, torch.stack([ids[s : s + 16] for s in starts]))
    assert torch.equal(w, calib_windows(ids, 4, 16, seed=3))
    assert not torch.equal(w, calib_windows(ids, 4, 16, seed=4))


def test_embedded_corpus_split():
    splits = text.embedded()
    assert set(splits["train"]) == {"sonnets", "comedy_of_errors"}
    assert set(splits["test"]) == {"midsummer_nights_dream"}
    assert splits["train"]["sonnets"].startswith("THE SONNETS")


def test_load_text_errors(tmp_path, monkeypatch):
    with pytest.raises(SurgeryError, match="not found"):
        read_text(str(tmp_path / "missing.txt"))
    f = tmp_path / "a.txt"
    f.write_text("hello")
    assert read_text(str(f)) == "hello"
    with pytest.raises(SurgeryError, match="data folder not found"):
        text.data_dir(str(tmp_path / "nope"))
    monkeypatch.delenv("SURGERY_DATA_DIR", raising=False)
    with pytest.raises(SurgeryError, match="no data folder"):
        text.data_dir(None)


def test_digits_split_is_seeded_and_disjoint():
    tr, te = images.digits("train"), images.digits("test")
    assert len(tr) + len(te) == 1797
    assert len(te) == 449
    x, y = next(te.loader(8))
    assert x.shape == (8, 1, 8, 8) and float(x.max()) <= 1.0 and y.dtype == torch.long
    assert torch.equal(images.digits("test").y, te.y)


def test_crop_flip_keeps_shape_and_content_when_no_shift():
    x = torch.rand(6, 3, 8, 8)
    out = images.crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(6):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))


@requires_data()
def test_wikitext2_gptq_string_length():
    assert len(text.wikitext2_test()) == 1_294_336


@requires_data()
def test_shakespeare_split_by_whole_plays():
    s = text.shakespeare()
    assert set(s["test"]) == {"macbeth", "twelfth_night"}
    assert set(s["valid"]) == {"julius_caesar", "much_ado_about_nothing"}
    assert len(s["train"]) == 38 and not (set(s["train"]) & (set(s["test"]) | set(s["valid"])))


@requires_data()
def test_recipe_text_sources_select_the_right_works():
    s = text.shakespeare()
    assert read_text("shakespeare:test") == text.join(s["test"])
    without = read_text("shakespeare:train-without:romeo_and_juliet")
    assert without == text.join({k: v for k, v in s["train"].items() if k != "romeo_and_juliet"})
    play = read_text("shakespeare-work:romeo_and_juliet")
    assert play == s["train"]["romeo_and_juliet"] and play not in without


@requires_data()
def test_cifar10_and_mnist_decode():
    c = images.cifar10("test")
    assert c.x.shape == (10000, 3, 32, 32) and c.x.dtype == torch.uint8
    assert torch.bincount(c.y).tolist() == [1000] * 10 and c.classes[0] == "airplane"
    m = images.mnist("test")
    assert m.x.shape == (10000, 1, 28, 28) and int(m.y[0]) == 7  # the canonical first t10k label


def test_local_text_formats_read_the_same_rows(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = ["first story", "second story", "third"]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": r, "id": i}) + "\n" for i, r in enumerate(rows)))
    pq.write_table(pa.table({"body": rows}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text(text.join(rows))
    joined = text.join(rows)
    assert read_text(str(tmp_path / "a.jsonl")) == joined
    assert read_text(f"{tmp_path / 'b.parquet'}#body") == joined
    assert read_text(str(tmp_path / "c.txt")) == joined
    with pytest.raises(SurgeryError, match="no column 'text'"):
        read_text(str(tmp_path / "b.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\nnot json\n')
    with pytest.raises(SurgeryError, match=r"bad.jsonl:2: not a JSON line"):
        read_text(str(tmp_path / "bad.jsonl"))


def test_sources_refuse_what_they_cannot_read(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02")
    for spec, match in [(str(tmp_path / "latin1.txt"), "not UTF-8"), (str(tmp_path / "binary.txt"), "binary file"),
                        ("foo:bar", "unknown data source 'foo:bar'"), ("hub:wikitext", "bad Hub source"),
                        ("embedded:valid", "embedded has splits"), ("nothing-here.txt", "text path not found")]:
        with pytest.raises(SurgeryError, match=match):
            read_text(spec)
    hub = parse_source("hub:wikitext:wikitext-2-raw-v1:train[:100]:text")
    assert (hub.name, hub.config, hub.split, hub.column) == ("wikitext", "wikitext-2-raw-v1", "train[:100]", "text")
    assert parse_source("hub:org/data::validation").config is None
    assert parse_source("hub:org/data::validation").column == "text"


def test_hub_dataset_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(SurgeryError, match="cannot load Hub dataset 'surely/absent'.*offline"):
        read_text("hub:surely/absent::train")


@requires_data()
def test_tinystories_split_is_disjoint_and_in_order():
    t = text.tinystories()
    assert len(t["train"]) > 4 * len(t["test"]) > 0
    assert not set(t["train"]) & set(t["test"])
    assert t["train"][0].startswith("Once upon a time")


def test_mixed_calibration_draws_evenly_from_each_text_and_interleaves():
    import torch

    from surgery.data.windows import calib_windows, mixed_calib_windows

    a, b = torch.arange(0, 500), torch.arange(1000, 1300)  # two texts with disjoint token ids
    w = mixed_calib_windows([a, b], nsamples=9, seqlen=16, seed=3)
    from_a = (w < 1000).all(dim=1)
    assert w.shape == (9, 16) and int(from_a.sum()) == 5 and int((~from_a).sum()) == 4
    assert not (from_a[:5].all() and not from_a[5:].any())  # interleaved, not 5 then 4
    assert torch.equal(w, mixed_calib_windows([a, b], nsamples=9, seqlen=16, seed=3))  # seeded
    assert torch.equal(mixed_calib_windows([a], 6, 16, seed=2), calib_windows(a, 6, 16, seed=2))


def test_recipe_calibration_accepts_a_stated_mix_and_refuses_a_test_split_in_it(tmp_path):
    from surgery.errors import SurgeryError
    from surgery.recipe import parse

    body = "calibration:\n  data: [embedded:train, {}]\n  nsamples: 8\nquant_stage:\n  quant_modifiers:\n    RTNModifier: {{}}\n"
    ok = tmp_path / "ok.yaml"
    ok.write_text(body.format("shakespeare:train"))
    r = parse(ok)
    assert r.calibration.sources == ["embedded:train", "shakespeare:train"]
    assert "embedded:train + shakespeare:train (8 windows" in r.calibration.description
    bad = tmp_path / "bad.yaml"
    bad.write_text(body.format("embedded:test"))
    with pytest.raises(SurgeryError, match="'embedded:test' is a test split"):
        parse(bad)
