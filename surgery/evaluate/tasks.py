"""Downstream task accuracy through lm-eval-harness (`simple_evaluate` on the in-memory model).

A task is an lm-eval task name, a path to a task YAML (or a folder of them), or a multiple-choice
task surgery builds from any text source (a file, `tinystories:test`, `embedded:test`, ...):
- `nextline@SOURCE`: given a sentence, pick the sentence that follows it among four (three drawn
  from elsewhere in the same text);
- `wordorder@SOURCE`: given a sentence, pick the next sentence as written among four (the other three
  are the same words shuffled) — a test small models pass well above chance.
Choices are scored by log-likelihood as lm-eval does; built tasks read local files only (offline).
"""
from __future__ import annotations

import json
import os
import random
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from surgery.data.sources import parse_source, read_text
from surgery.errors import SurgeryError, require

BUILT = ("nextline@", "wordorder@")
ITEMS = 200
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def check_specs(specs: list[str]) -> None:
    """Refuse a malformed task spec before any model loads."""
    for s in specs:
        require(isinstance(s, str) and s.strip() != "", f"a task must be a non-empty string, got {s!r}")
        if s.startswith(BUILT):
            parse_source(s.split("@", 1)[1])


def built_items(kind: str, text: str, n: int = ITEMS, seed: int = 0) -> list[dict[str, Any]]:
    """`n` four-way items: a sentence as context; the sentence after it, and three distractors
    (other sentences for `nextline`, its own words shuffled for `wordorder`)."""
    sentences = [" ".join(s.split()) for s in _SENTENCE.split(text)]
    ok = [i for i in range(len(sentences) - 1)
          if 4 <= len(sentences[i].split()) <= 40 and 3 <= len(sentences[i + 1].split()) <= 40]
    require(len(ok) >= 8, f"the text has {len(ok)} usable sentence pairs; a nextline task needs at least 8")
    rng = random.Random(seed)
    items = []
    for i in rng.sample(ok, min(n, len(ok))):
        if kind == "nextline":
            pool = [j for j in ok if abs(j - i) > 1]
            choices = [sentences[i + 1]] + [sentences[j + 1] for j in rng.sample(pool, 3)]
        else:
            words = sentences[i + 1].split()
            choices = [sentences[i + 1]]
            while len(choices) < 4:
                shuffled = " ".join(rng.sample(words, len(words)))
                choices.append(shuffled if shuffled not in choices else shuffled + " .")
        order = list(range(4))
        rng.shuffle(order)
        items.append({"context": sentences[i], "choices": [choices[k] for k in order], "label": order.index(0)})
    return items


def _task_yaml(name: str, data: Path) -> str:
    return "\n".join([
        f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {data}",
        "test_split: test", "output_type: multiple_choice", 'doc_to_text: "{{context}}"',
        'doc_to_choice: "{{choices}}"', "doc_to_target: label", 'target_delimiter: " "', "metric_list:",
        "  - metric: acc", "    aggregation: mean", "    higher_is_better: true", ""])


def _task_name(spec: str) -> str:
    return "surgery_" + re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")


@contextmanager
def _quiet() -> Iterator[list[str]]:
    """lm-eval and its libraries print progress bars and git probes on both streams: keep them out
    of the user's output (they come back if the run fails)."""
    out: list[str] = []
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+") as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            out.append(sink.read())


def run_tasks(model: nn.Module, tokenizer: Any, specs: list[str], data_dir: str | os.PathLike | None = None,
              batch_size: int = 8, limit: int | None = None) -> dict[str, float]:
    """Accuracy (%) per task spec, through lm-eval's `simple_evaluate` on `model` as it is."""
    if not specs:
        return {}
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SurgeryError("tasks need lm-eval-harness: pip install 'lm-eval==0.4.13'") from None
    require(tokenizer is not None, "the model has no tokenizer; cannot run tasks")
    if hasattr(model, "merge_and_unload"):  # a PEFT-wrapped model: lm-eval wants the plain model
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    names = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            if spec.startswith(BUILT):
                kind, source = spec.split("@", 1)
                name = _task_name(spec)
                data = Path(tmp) / f"{name}.jsonl"
                items = built_items(kind, read_text(source, data_dir))
                data.write_text("".join(json.dumps(it) + "\n" for it in items))
                (Path(tmp) / f"{name}.yaml").write_text(_task_yaml(name, data))
                names[spec] = name
            else:
                names[spec] = Path(spec).stem if Path(spec).suffix in (".yaml", ".yml") else spec
        include = [tmp] + [str(Path(s).parent if Path(s).is_file() else s) for s in specs if Path(s).exists()]
        builtin = any(not s.startswith(BUILT) and not Path(s).exists() for s in specs)
        try:
            with _quiet():
                manager = TaskManager(include_path=include, include_defaults=builtin, verbosity="ERROR")
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                          prefix_token_id=getattr(model.config, "bos_token_id", None))
                res = simple_evaluate(model=lm, tasks=list(names.values()), task_manager=manager, limit=limit,
                                      verbosity="ERROR")
        except Exception as e:  # unknown task, no data offline: one line
            raise SurgeryError(f"lm-eval could not run {list(names)}: {str(e).splitlines()[0] if str(e) else e}") from None
    out = {}
    for spec, name in names.items():
        metrics = res["results"].get(name, {})
        acc = metrics.get("acc,none", metrics.get("acc_norm,none"))
        require(acc is not None, f"task {spec} reported no accuracy (metrics: {sorted(metrics)})")
        out[spec] = 100.0 * float(acc)
    return out
