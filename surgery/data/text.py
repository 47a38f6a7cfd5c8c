"""Text corpora: files, folders of plays, the WikiText raw file, TinyStories, the embedded corpus.

Every loader returns a list of documents; `join` makes the GPTQ-protocol string ("\n\n"-joined).
Benchmark data are found through a path argument or `SURGERY_DATA_DIR` — never a fixed path.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from surgery.errors import SurgeryError, require

DATA_ENV = "SURGERY_DATA_DIR"

# Whole works held out of the Shakespeare reference LM's training set (file stems, `_gut` dropped).
SHAKESPEARE_HELDOUT = {
    "valid": ("julius_caesar", "much_ado_about_nothing"),
    "test": ("macbeth", "twelfth_night"),
}
EMBEDDED_HELDOUT = ("midsummer_nights_dream",)


def embedded_text_dir() -> Path:
    """The public-domain corpus that ships inside the package (see its SOURCES.md)."""
    return Path(str(resources.files("surgery") / "assets" / "text"))


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: `path`, else `$SURGERY_DATA_DIR`; a clear error if neither."""
    chosen = path or os.environ.get(DATA_ENV)
    require(chosen is not None, f"no data folder: pass --data-dir or set {DATA_ENV} "
            "(e.g. to ../shared/data)")
    p = Path(chosen)
    require(p.is_dir(), f"data folder not found: {p}")
    return p


def stem(path: Path) -> str:
    """A work's name from its file: `hamlet_gut.txt` → `hamlet`."""
    s = path.stem
    return s[:-4] if s.endswith("_gut") else s


def wikitext_rows(path: str | os.PathLike) -> list[str]:
    """Rows of a WikiText raw file as the HF dataset has them (blank rows are empty strings)."""
    text = read_utf8(path)
    return ["" if r == " \n" else r for r in text.splitlines(keepends=True)]


def read_utf8(path: str | os.PathLike) -> str:
    """A text file's contents, or one line saying it is not UTF-8 text."""
    p = Path(path)
    data = p.read_bytes()
    require(b"\x00" not in data, f"{p} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SurgeryError(f"{p} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                           "convert it to UTF-8") from None


def read_documents(path: str | os.PathLike) -> dict[str, str]:
    """name → text for a file (one document) or a folder (each `*.txt` one document, sorted)."""
    p = Path(path)
    require(p.exists(), f"text path not found: {p}")
    if p.is_dir():
        files = sorted(p.glob("*.txt"))
        require(bool(files), f"no *.txt files in {p}")
        return {stem(f): read_utf8(f) for f in files}
    if p.name.endswith(".raw") and p.name.startswith("wiki."):
        return {p.stem: join(wikitext_rows(p))}
    return {stem(p): read_utf8(p)}


def join(docs: list[str] | dict[str, str]) -> str:
    """The GPTQ-protocol joined string."""
    values = list(docs.values()) if isinstance(docs, dict) else list(docs)
    return "\n\n".join(values)


def split_works(docs: dict[str, str], heldout: dict[str, tuple[str, ...]]) -> dict[str, dict[str, str]]:
    """Split works into `train` and the named held-out splits; unknown names are an error."""
    out: dict[str, dict[str, str]] = {name: {} for name in heldout}
    taken = {}
    for split, names in heldout.items():
        for n in names:
            require(n in docs, f"held-out work {n!r} not found among {len(docs)} documents")
            out[split][n] = docs[n]
            taken[n] = split
    out["train"] = {n: t for n, t in docs.items() if n not in taken}
    return out


def shakespeare(root: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """The 42 works of `text/shakespeare/` split into train / valid / test by whole plays."""
    folder = data_dir(root) / "text" / "shakespeare"
    return split_works(read_documents(folder), {k: v for k, v in SHAKESPEARE_HELDOUT.items()})


def embedded() -> dict[str, dict[str, str]]:
    """The embedded corpus split into train / test (one held-out play)."""
    return split_works(read_documents(embedded_text_dir()), {"test": EMBEDDED_HELDOUT})


def wikitext2_test(root: str | os.PathLike | None = None) -> str:
    """WikiText-2 raw test, joined as the GPTQ protocol does (1,294,336 characters)."""
    return join(wikitext_rows(data_dir(root) / "text" / "wikitext-2" / "wiki.test.raw"))


TINYSTORIES_FILE = ("text", "tinystories", "tinystories_valid_part.txt")
TINYSTORIES_TEST_SHARE = 0.2  # the last 20 % of the stories (by file order) are held out


def tinystories(root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The TinyStories part beside stories260K, split by file order into `train` (first 80 % of the
    stories) and `test` (last 20 %): disjoint, so calibration never sees evaluation text."""
    stories = [s.strip() for s in read_utf8(data_dir(root).joinpath(*TINYSTORIES_FILE)).split("\n\n")]
    stories = [s for s in stories if s]
    cut = int(round(len(stories) * (1 - TINYSTORIES_TEST_SHARE)))
    return {"train": stories[:cut], "test": stories[cut:]}
