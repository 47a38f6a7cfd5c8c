"""Text sources by name: what `--data`, `calibration.data` and `eval_stage.data` accept.

    embedded:train | embedded:test            the corpus that ships in the package
    shakespeare:train | valid | test          the plays, split by whole works (SURGERY_DATA_DIR)
    shakespeare:train-without:WORK            the training works but one
    shakespeare-work:WORK                     one work
    tinystories:train | tinystories:test      the TinyStories text beside stories260K (80/20 by story)
    wikitext2                                 WikiText-2 raw test (evaluation only)
    hub:NAME:CONFIG:SPLIT[:COLUMN]            a Hub dataset through `datasets.load_dataset` (CONFIG may
                                              be empty; COLUMN defaults to `text`)
    PATH[#COLUMN]                             a .txt/.raw file, a folder of .txt, or a .jsonl/.parquet
                                              file (COLUMN defaults to `text`)

A source is parsed (and its files checked) before any model loads; reading happens later. Every
failure is one line. A source always names its split, so calibration never falls back to a test set.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from surgery.data import text as textdata
from surgery.errors import SurgeryError, require

NAMED = ("embedded", "shakespeare", "shakespeare-work", "tinystories", "wikitext2", "hub")
_HUB = re.compile(r"^hub:(?P<name>[^:]+):(?P<config>[^:]*):(?P<split>[^:\[]+(?:\[[^\]]*\])?)(?::(?P<column>[^:]+))?$")
_SPLITS = {"embedded": ("train", "test"), "shakespeare": ("train", "valid", "test"),
           "tinystories": ("train", "test")}
_FILE_SUFFIXES = (".txt", ".raw", ".jsonl", ".json", ".parquet", ".md")


@dataclass(frozen=True)
class TextSource:
    """A parsed source: `kind` and its arguments; `split` when the source has one."""

    spec: str
    kind: str
    name: str = ""
    split: str | None = None
    config: str | None = None
    column: str = "text"

    @property
    def needs_data_dir(self) -> bool:
        return self.kind in ("shakespeare", "shakespeare-without", "shakespeare-work", "tinystories",
                             "wikitext2")

    def check(self, data_dir: str | os.PathLike | None = None) -> None:
        """Cheap checks that need no model: the data folder and local files exist."""
        if self.needs_data_dir:
            textdata.data_dir(data_dir)
        if self.kind == "path":
            p = Path(self.name)
            require(p.exists(), f"text path not found: {p}")
            if p.is_file():
                require(p.suffix in _FILE_SUFFIXES or p.name.startswith("wiki."),
                        f"{p}: unsupported text file type {p.suffix!r}; use .txt, .jsonl or .parquet")

    def read(self, data_dir: str | os.PathLike | None = None) -> str:
        """The GPTQ-protocol joined text of this source."""
        self.check(data_dir)
        text = _READERS[self.kind](self, data_dir)
        require(len(text.strip()) > 0, f"empty data: {self.spec} holds no text")
        return text


def parse_source(spec: str) -> TextSource:
    """Parse a source string, or fail in one line naming what is wrong."""
    require(isinstance(spec, str) and spec.strip() != "", f"a data source must be a non-empty string, got {spec!r}")
    if spec.startswith("hub:"):
        m = _HUB.match(spec)
        require(m is not None, f"bad Hub source {spec!r}: write hub:NAME:CONFIG:SPLIT[:COLUMN] "
                "(CONFIG may be empty, e.g. hub:wikitext:wikitext-2-raw-v1:train:text)")
        return TextSource(spec, "hub", m["name"], m["split"], m["config"] or None, m["column"] or "text")
    if spec == "wikitext2":
        return TextSource(spec, "wikitext2", split="test")
    path, _, column = spec.partition("#")
    if Path(path).exists():
        return TextSource(spec, "path", path, None, None, column or "text")
    prefix, sep, rest = spec.partition(":")
    if not sep or len(prefix) <= 1:  # no prefix (or a Windows drive letter): a path that is not there
        raise SurgeryError(f"text path not found: {spec} (named sources: {', '.join(NAMED)}; "
                           "see `surgery score --help`)")
    if prefix == "shakespeare" and rest.startswith("train-without:"):
        work = rest.split(":", 1)[1]
        require(work != "", f"{spec}: name the work to leave out")
        return TextSource(spec, "shakespeare-without", work, "train")
    if prefix == "shakespeare-work":
        require(rest != "", f"{spec}: name the work")
        return TextSource(spec, "shakespeare-work", rest)
    if prefix in _SPLITS:
        require(rest in _SPLITS[prefix], f"{prefix} has splits {', '.join(_SPLITS[prefix])}, not {rest!r}")
        return TextSource(spec, prefix, prefix, rest)
    raise SurgeryError(f"unknown data source {spec!r}: the prefix {prefix + ':'!r} is not one of "
                       f"{', '.join(p + ':' for p in NAMED if p != 'wikitext2')} (or wikitext2, or a path)")


def read_text(spec: str, data_dir: str | os.PathLike | None = None) -> str:
    """Joined text of a source string."""
    return parse_source(spec).read(data_dir)


def _embedded(s: TextSource, data_dir: object) -> str:
    return textdata.join(textdata.embedded()[s.split])


def _shakespeare(s: TextSource, data_dir: str | os.PathLike | None) -> str:
    return textdata.join(textdata.shakespeare(data_dir)[s.split])


def _shakespeare_without(s: TextSource, data_dir: str | os.PathLike | None) -> str:
    train = textdata.shakespeare(data_dir)["train"]
    require(s.name in train, f"{s.name!r} is not a training work; works: {', '.join(sorted(train))}")
    return textdata.join({k: v for k, v in train.items() if k != s.name})


def _shakespeare_work(s: TextSource, data_dir: str | os.PathLike | None) -> str:
    works = textdata.read_documents(textdata.data_dir(data_dir) / "text" / "shakespeare")
    require(s.name in works, f"no Shakespeare work {s.name!r}; works: {', '.join(sorted(works))}")
    return works[s.name]


def _tinystories(s: TextSource, data_dir: str | os.PathLike | None) -> str:
    return textdata.join(textdata.tinystories(data_dir)[s.split])


def _wikitext2(s: TextSource, data_dir: str | os.PathLike | None) -> str:
    return textdata.wikitext2_test(data_dir)


def _rows_from_file(p: Path, column: str) -> list[str]:
    if p.suffix in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(textdata.read_utf8(p).splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SurgeryError(f"{p}:{i}: not a JSON line ({e.msg})") from None
            require(isinstance(obj, dict) and column in obj, f"{p}:{i}: no {column!r} field")
            require(isinstance(obj[column], str), f"{p}:{i}: field {column!r} is not a string")
            rows.append(obj[column])
        return rows
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:  # pyarrow raises many types for a bad file
            raise SurgeryError(f"cannot read parquet file {p}: {str(e).splitlines()[0]}") from None
        require(column in table.column_names, f"{p} has no column {column!r}; columns: {table.column_names}")
        return [str(v) for v in table.column(column).to_pylist() if v is not None]
    return list(textdata.read_documents(p).values())


def _path(s: TextSource, data_dir: object) -> str:
    p = Path(s.name)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".parquet"))
        if files:
            return textdata.join([r for f in files for r in _rows_from_file(f, s.column)])
    return textdata.join(_rows_from_file(p, s.column) if p.is_file() else list(textdata.read_documents(p).values()))


def _hub(s: TextSource, data_dir: object) -> str:
    from datasets import load_dataset

    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        ds = load_dataset(s.name, s.config, split=s.split)
    except Exception as e:  # offline, unknown id, bad split: one line either way
        hint = " (offline and not in the datasets cache)" if offline else ""
        raise SurgeryError(f"cannot load Hub dataset {s.name!r} config {s.config!r} split {s.split!r}{hint}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    require(s.column in ds.column_names, f"Hub dataset {s.name!r} has no column {s.column!r}; "
            f"columns: {ds.column_names}")
    return textdata.join([str(v) for v in ds[s.column]])


_READERS = {"embedded": _embedded, "shakespeare": _shakespeare, "shakespeare-without": _shakespeare_without,
            "shakespeare-work": _shakespeare_work, "tinystories": _tinystories, "wikitext2": _wikitext2,
            "path": _path, "hub": _hub}
