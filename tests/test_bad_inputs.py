"""Bad input through the real CLI, in subprocesses: every case ends with exit 2 and exactly one
`surgery: error:` line — no traceback, no partial folder, every file that was there unchanged. And
a fuzz test of the recipe parser: a mutated shipped recipe parses or fails in one line."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import tiny_llama
from surgery import SurgeryError, score
from surgery.data import text
from surgery.models import save_model
from surgery.models.tokenizer import train_bpe
from surgery.models.vision import build_vision

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
calibration: {data: corpus.txt, nsamples: 4, seqlen: 16}
quant_stage:
  quant_modifiers:
    GPTQModifier: {num_bits: 4, group_size: 8}
eval_stage: {data: [corpus.txt], seqlen: 16, speed: false}
"""
PRUNE = """\
calibration: {data: corpus.txt, nsamples: 4, seqlen: 16}
prune_stage:
  prune_modifiers:
    TyrPruningModifier: {sparsity: 0.25, search_samples: 4, search: {SEARCH}}
"""

# (id, argv, expected text in the one error line); files are made by the `workspace` fixture
CASES = [
    # score: models
    ("score-missing-model", "score --model nope --data corpus.txt --out o1.safetensors", "model folder not found"),
    ("score-unsupported", "score --model gpt2 --data corpus.txt --out o2.safetensors", "unsupported architecture 'gpt2'"),
    ("score-truncated", "score --model truncated --data corpus.txt --seqlen 16 --out o3.safetensors", "corrupt or truncated"),
    ("score-missing-tensors", "score --model holes --data corpus.txt --seqlen 16 --out o4.safetensors", "missing weight(s)"),
    ("score-only-pickle", "score --model pickled --data corpus.txt --out o5.safetensors", "never pickles"),
    ("score-bad-config", "score --model badconfig --data corpus.txt --out o6.safetensors", "corrupt"),
    ("score-no-config", "score --model emptydir --data corpus.txt --out o7.safetensors", "no config.json"),
    ("score-model-is-file", "score --model corpus.txt --data corpus.txt --out o8.safetensors", "not a folder"),
    # score: data
    ("score-binary", "score --model lm --data binary.txt --seqlen 16 --out o9.safetensors", "binary file"),
    ("score-latin1", "score --model lm --data latin1.txt --seqlen 16 --out o10.safetensors", "not UTF-8"),
    ("score-unknown-prefix", "score --model lm --data foo:bar --out o11.safetensors", "unknown data source 'foo:bar'"),
    ("score-bad-hub", "score --model lm --data hub:wikitext --out o12.safetensors", "bad Hub source"),
    ("score-empty-data", "score --model lm --data empty.txt --seqlen 16 --out o13.safetensors", "empty data"),
    ("score-missing-data", "score --model lm --data absent.txt --out o14.safetensors", "text path not found"),
    ("score-no-data", "score --model lm --out o15.safetensors", "--data is required"),
    ("score-images-on-lm", "score --model lm --images digits --out o16.safetensors", "--images needs an image classifier"),
    ("score-text-on-vision", "score --model vision --data corpus.txt --out o17.safetensors", "image classifier: use --images"),
    ("score-unknown-class", "score --model vision --images digits --classes 12 --out o18.safetensors", "class 12 does not exist"),
    # score: numbers
    ("score-max-windows-neg", "score --model lm --data corpus.txt --max-windows -1 --out o19.safetensors", "positive integer"),
    ("score-max-windows-0", "score --model lm --data corpus.txt --max-windows 0 --out o20.safetensors", "positive integer"),
    ("score-seqlen-neg", "score --model lm --data corpus.txt --seqlen -5 --out o21.safetensors", "positive integer"),
    ("score-seqlen-1", "score --model lm --data corpus.txt --seqlen 1 --out o22.safetensors", "at least 2 tokens"),
    ("score-seqlen-too-long", "score --model lm --data corpus.txt --seqlen 100000 --out o23.safetensors", "max_position_embeddings"),
    ("score-nsamples-0", "score --model lm --data corpus.txt --nsamples 0 --out o24.safetensors", "positive integer"),
    ("score-nsamples-neg", "score --model lm --data corpus.txt --nsamples -3 --out o25.safetensors", "positive integer"),
    ("score-batch-0", "score --model lm --data corpus.txt --batch-size 0 --out o26.safetensors", "positive integer"),
    ("score-seqlen-word", "score --model lm --data corpus.txt --seqlen ten --out o27.safetensors", "positive integer"),
    ("score-kind", "score --model lm --data corpus.txt --kind bogus --out o28.safetensors", "invalid choice"),
    ("score-density-0", "score --model lm --data corpus.txt --mask-density 0 --out o29.safetensors", "(0, 1]"),
    ("score-density-2", "score --model lm --data corpus.txt --mask-density 2 --out o30.safetensors", "(0, 1]"),
    ("score-density-word", "score --model lm --data corpus.txt --mask-density half --out o31.safetensors", "(0, 1]"),
    ("score-bad-regex", "score --model lm --data corpus.txt --seqlen 16 --include [ --out o32.safetensors", "bad parameter regex"),
    ("score-device-cuda", "score --model lm --data corpus.txt --seqlen 16 --device cuda --out o33.safetensors", "no CUDA device"),
    ("score-device-tpu", "score --model lm --data corpus.txt --seqlen 16 --device tpu --out o34.safetensors", "--device"),
    ("score-dtype", "score --model lm --data corpus.txt --dtype fp8 --out o35.safetensors", "invalid choice"),
    # score: outputs
    ("score-out-dir", "score --model lm --data corpus.txt --out outdir", "is a folder"),
    ("score-out-exists", "score --model lm --data corpus.txt --out existing.safetensors", "exists"),
    ("score-missing-out", "score --model lm --data corpus.txt", "--out"),
    ("score-mask-out-is-out", "score --model lm --data corpus.txt --out o36.safetensors --mask-out existing.safetensors",
     "exists"),
    # mask
    ("mask-missing-map", "mask --map absent.safetensors --density 0.5 --out m1.safetensors", "file not found"),
    ("mask-not-a-map", "mask --map notamap.safetensors --density 0.5 --out m2.safetensors", "not a surgery saliency map"),
    ("mask-lots", "mask --map lots.safetensors --density 0.5 --out m3.safetensors", "'samples' is not an integer"),
    ("mask-bad-kind", "mask --map badkind.safetensors --density 0.5 --out m4.safetensors", "header field 'kind'"),
    ("mask-junk-file", "mask --map binary.txt --density 0.5 --out m5.safetensors", "corrupt or truncated"),
    ("mask-out-is-map", "mask --map map.safetensors --density 0.5 --out map.safetensors", "also an input"),
    ("mask-density-0", "mask --map map.safetensors --density 0 --out m6.safetensors", "(0, 1]"),
    ("mask-other-model", "mask --map othermap.safetensors --model lm --density 0.5 --out m7.safetensors", "another model"),
    ("mask-other-weights", "mask --map map.safetensors --model lm2 --density 0.5 --out m8.safetensors", "other weights"),
    # eval
    ("eval-batch-0", "eval --model lm --data corpus.txt --batch-size 0", "positive integer"),
    ("eval-no-model", "eval --data corpus.txt", "one of the arguments --model --reference is required"),
    ("eval-images-on-lm", "eval --model lm --images digits", "--images needs an image classifier"),
    ("eval-unknown-reference", "eval --reference no-such-model --data corpus.txt", "model folder not found"),
    # compare
    ("compare-out-file", "compare --dense lm --candidate lm --data corpus.txt --out existing.safetensors",
     "exists and is a file"),
    ("compare-out-foreign", "compare --dense lm --candidate lm --data corpus.txt --out foreign --overwrite",
     "not written by surgery"),
    ("compare-missing-candidate", "compare --dense lm --candidate nope --data corpus.txt --seqlen 16", "model folder not found"),
    ("compare-no-data", "compare --dense lm --candidate lm", "--data is required"),
    # run: outputs
    ("run-output-dot", "run good.yaml --model lm --output .", "current folder"),
    ("run-output-up", "run good.yaml --model lm --output a/b/..", "current folder"),
    ("run-output-file", "run good.yaml --model lm --output existing.safetensors", "exists and is a file"),
    ("run-output-file-overwrite", "run good.yaml --model lm --output existing.safetensors --overwrite",
     "exists and is a file"),
    ("run-output-foreign", "run good.yaml --model lm --output foreign --overwrite", "not written by surgery"),
    ("run-output-exists", "run good.yaml --model lm --output foreign", "output folder exists"),
    # run: recipes
    ("run-missing-recipe", "run absent.yaml --model lm --output r1", "recipe not found"),
    ("run-invalid-yaml", "run invalid.yaml --model lm --output r2", "invalid YAML"),
    ("run-unknown-key", "run unknown_key.yaml --model lm --output r3", "unknown key 'quant_stag'"),
    ("run-num-bits", "run num_bits.yaml --model lm --output r4", "num_bits: Input should be 2, 3, 4 or 8"),
    ("run-set-malformed", "run good.yaml --model lm --output r5 --set quant_stage.quant_modifiers.GPTQModifier.num_bits={a: b",
     "invalid YAML"),
    ("run-set-section", "run good.yaml --model lm --output r6 --set nope.x=1", "no section 'nope'"),
    ("run-set-no-equals", "run good.yaml --model lm --output r7 --set quant_stage", "KEY=VALUE"),
    ("run-eval-data-missing", "run eval_missing.yaml --model lm --output r8", "text path not found"),
    ("run-calib-test-split", "run test_split.yaml --model lm --output r9", "is a test split"),
    ("run-batch-0", "run batch0.yaml --model lm --output r10", "batch_size: Input should be greater than 0"),
    ("run-targets-int", "run targets.yaml --model lm --output r11", "targets.0: Input should be a valid string"),
    ("run-stages-bad", "run stages.yaml --model lm --output r12", "stages.0.1: Input should be a valid integer"),
    ("run-eval-data-int", "run eval_int.yaml --model lm --output r13", "data.0: Input should be a valid string"),
    ("run-duplicate-key", "run duplicate.yaml --model lm --output r14", "duplicate key 'quant_stage'"),
    ("run-top-k-0", "run top_k.yaml --model lm --output r15", "top_k: Input should be greater than 0"),
    ("run-survivors-0", "run survivors.yaml --model lm --output r16", "survivors.0: Input should be greater than 0"),
    ("run-windows-0", "run windows.yaml --model lm --output r17", "stage_windows.0: Input should be greater than 0"),
    ("run-resume-dir", "run resume_dir.yaml --model lm --output r18", "resume_dir: unknown option"),
    ("run-images-on-lm", "run images.yaml --model lm --output r19", "needs an image classifier"),
    ("run-seqlen-too-long", "run long.yaml --model lm --output r20", "max_position_embeddings"),
    ("run-no-model", "run good.yaml --output r21", "no model"),
    ("run-missing-model", "run good.yaml --model nope --output r22", "model folder not found"),
    ("run-two-modifiers", "run two.yaml --model lm --output r23", "holds exactly one modifier"),
    ("run-unknown-modifier", "run modifier.yaml --model lm --output r24", "GPTQModifer: unknown option"),
    ("run-unlearn-method", "run salun_method.yaml --model vision --output r25", "SalUnModifier sets the method"),
    ("run-lm-stage-on-vision", "run good.yaml --model vision --output r26", "needs a language model"),
    ("run-device-cuda", "run good.yaml --model lm --output r27 --device cuda", "no CUDA device"),
    ("run-device-word", "run good.yaml --model lm --output r28 --device gpu", "device must be auto, cpu, cuda"),
    ("run-recipe-device", "run device.yaml --model lm --output r29", "device.yaml:1: device: device must be"),
    ("run-recipe-dtype", "run dtype.yaml --model lm --output r30", "dtype must be one of fp32, bf16, fp16"),
    ("run-dtype-flag", "run good.yaml --model lm --output r31 --dtype int8", "invalid choice"),
    ("mask-device-cuda", "mask --map absent.safetensors --density 0.1 --out m9.safetensors --device cuda", "not found"),
    ("demo-device-cuda", "demo --output d1 --device cuda", "no CUDA device"),
    ("score-fsdp-one-process", "score --model lm --data corpus.txt --seqlen 16 --fsdp --out o36.safetensors",
     "launch with torchrun"),
    # others
    ("build-unknown", "build no-such-model", "unknown reference model"),
    ("demo-foreign-output", "demo --output foreign", "not a previous demo output"),
    ("unknown-command", "frobnicate", "invalid choice"),
]

RECIPES = {
    "good.yaml": GOOD,
    "invalid.yaml": "quant_stage: {\n",
    "unknown_key.yaml": GOOD.replace("quant_stage:", "quant_stag:"),
    "num_bits.yaml": GOOD.replace("num_bits: 4", "num_bits: 5"),
    "eval_missing.yaml": GOOD.replace("data: [corpus.txt]", "data: [absent.txt]"),
    "test_split.yaml": GOOD.replace("data: corpus.txt", "data: embedded:test"),
    "batch0.yaml": GOOD.replace("seqlen: 16}", "seqlen: 16, batch_size: 0}", 1),
    "targets.yaml": GOOD.replace("group_size: 8}", "group_size: 8, targets: [123]}"),
    "stages.yaml": GOOD.replace("GPTQModifier: {num_bits: 4, group_size: 8}",
                                "ApiQModifier: {num_bits: 4, group_size: 8, stages: [[wpt, x]]}"),
    "eval_int.yaml": GOOD.replace("data: [corpus.txt]", "data: [123]"),
    "duplicate.yaml": GOOD + "quant_stage: {}\n",
    "top_k.yaml": PRUNE.replace("{SEARCH}", "{top_k: 0}"),
    "survivors.yaml": PRUNE.replace("{SEARCH}", "{survivors: [0, 0]}"),
    "windows.yaml": PRUNE.replace("{SEARCH}", "{stage_windows: [0, 0, 0]}"),
    "resume_dir.yaml": PRUNE.replace("sparsity: 0.25,", "sparsity: 0.25, resume_dir: x,").replace("{SEARCH}", "{}"),
    "images.yaml": "unlearn_stage:\n  data: {images: digits, forget_class: 3}\n  unlearn_modifiers:\n    SalUnModifier: {}\n",
    "long.yaml": GOOD.replace("seqlen: 16}", "seqlen: 100000}", 1),
    "two.yaml": GOOD.replace("    GPTQModifier: {num_bits: 4, group_size: 8}\n",
                             "    GPTQModifier: {num_bits: 4, group_size: 8}\n    RTNModifier: {}\n"),
    "modifier.yaml": GOOD.replace("GPTQModifier", "GPTQModifer"),
    "device.yaml": "device: tpu\n" + GOOD,
    "dtype.yaml": "dtype: float8\n" + GOOD,
    "salun_method.yaml": "unlearn_stage:\n  data: {images: digits, forget_class: 3}\n  unlearn_modifiers:\n"
                         "    SalUnModifier: {method: rl}\n",
}


def _tree(root: Path) -> dict[str, str]:
    """Every path under `root` → content hash (folders: '')."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("bad")
    tok = train_bpe(text.embedded()["train"].values(), 300)
    lm = tiny_llama(vocab_size=300, max_position_embeddings=256)
    save_model(lm, ws / "lm", tokenizer=tok)
    save_model(tiny_llama(vocab_size=300, max_position_embeddings=256, seed=1), ws / "lm2", tokenizer=tok)
    save_model(build_vision({"arch": "mlp", "in_features": 64, "hidden": 16}), ws / "vision")
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(ws / "gpt2")
    shutil.copytree(ws / "lm", ws / "truncated")
    w = ws / "truncated" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-500])
    shutil.copytree(ws / "lm", ws / "holes")
    state = load_file(ws / "holes" / "model.safetensors")
    save_file({k: v for k, v in state.items() if ".layers.1." not in k}, str(ws / "holes" / "model.safetensors"),
              metadata={"format": "pt"})
    shutil.copytree(ws / "lm", ws / "pickled")
    (ws / "pickled" / "model.safetensors").unlink()
    (ws / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    shutil.copytree(ws / "lm", ws / "badconfig")
    (ws / "badconfig" / "config.json").write_text("{not json")
    (ws / "emptydir").mkdir()
    (ws / "corpus.txt").write_text(text.join(text.embedded()["test"])[:6000])
    (ws / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (ws / "latin1.txt").write_bytes("déjà vu, naïve café ".encode("latin-1") * 50)
    (ws / "empty.txt").write_text("  \n\n")
    (ws / "outdir").mkdir()
    (ws / "existing.safetensors").write_bytes(b"a user's file")
    (ws / "foreign").mkdir()
    (ws / "foreign" / "thesis.tex").write_text("years of work")
    smap = score(lm, [torch.randint(0, 300, (2, 8))], kind="grad", progress=False)
    smap.identify(lm)
    smap.save(ws / "map.safetensors")
    score(tiny_llama(vocab_size=300, intermediate_size=48), [torch.randint(0, 300, (2, 8))], kind="grad",
          progress=False).save(ws / "othermap.safetensors")
    save_file({"x": torch.zeros(2)}, str(ws / "notamap.safetensors"), metadata={"format": "something"})
    tensors = load_file(ws / "map.safetensors")
    from safetensors import safe_open

    with safe_open(str(ws / "map.safetensors"), "pt") as f:
        meta = dict(f.metadata())
    save_file(tensors, str(ws / "lots.safetensors"), metadata={**meta, "samples": "lots"})
    save_file(tensors, str(ws / "badkind.safetensors"), metadata={**meta, "kind": "vibes"})
    for name, body in RECIPES.items():
        (ws / name).write_text(body)
    return ws


def _run(ws: Path, argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("SURGERY_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "surgery.cli.main", *_fix(argv.split(" "))], capture_output=True,
                          text=True, cwd=ws, env=env, timeout=300)


def _fix(args: list[str]) -> list[str]:
    """`--set KEY={a: b` split on the space: join it back."""
    out = []
    for a in args:
        if out and out[-1].endswith("={a:"):
            out[-1] += " " + a
        else:
            out.append(a)
    return out


@pytest.fixture(scope="module")
def results(workspace):
    before = _tree(workspace)
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip([c[0] for c in CASES], pool.map(lambda c: _run(workspace, c[1]), CASES)))
    return procs, before, _tree(workspace)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(results, case):
    name, argv, expected = case
    proc = results[0][name]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (argv, proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("surgery: error:"), (argv, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and expected in lines[0], (argv, lines[0])


def test_no_case_left_anything_behind_or_changed_a_file(results):
    _, before, after = results
    assert after == before


def test_table_is_big_enough():
    assert len(CASES) >= 60


SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


def _mutate(node, rng: random.Random):
    """A copy of a recipe tree with one random change: a key dropped, misspelt or added, a value
    replaced by another type, a negative or a zero, a list unwrapped, a scalar wrapped."""
    import copy

    tree = copy.deepcopy(node)
    paths = []

    def walk(n, path):
        if isinstance(n, dict):
            for k, v in n.items():
                paths.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(n, list):
            for i, v in enumerate(n):
                paths.append(path + (i,))
                walk(v, path + (i,))

    walk(tree, ())
    path = rng.choice(paths)
    parent = tree
    for p in path[:-1]:
        parent = parent[p]
    key = path[-1]
    value = parent[key]
    op = rng.choice(["drop", "typo", "add", "string", "negative", "zero", "wrap", "unwrap", "null", "float", "huge"])
    if op == "drop" and isinstance(parent, dict):
        del parent[key]
    elif op == "typo" and isinstance(parent, dict):
        parent[str(key)[:-1] + "x"] = parent.pop(key)
    elif op == "add" and isinstance(value, dict):
        value["surplus"] = 1
    elif op == "string":
        parent[key] = "seven"
    elif op == "negative":
        parent[key] = -3
    elif op == "zero":
        parent[key] = 0
    elif op == "wrap":
        parent[key] = [value]
    elif op == "unwrap" and isinstance(value, list) and value:
        parent[key] = value[0]
    elif op == "null":
        parent[key] = None
    elif op == "float":
        parent[key] = 0.5
    else:
        parent[key] = 10**9
    return tree


def test_fuzzed_recipes_parse_or_fail_in_one_line(tmp_path):
    """400 random mutations of the shipped recipes: each either parses (and then passes or fails the
    checks that run before any model loads with a SurgeryError) or fails with one SurgeryError line."""
    from surgery.recipe.schema import parse

    rng = random.Random(0)
    llama = {"model_type": "llama", "max_position_embeddings": 512}
    outcomes = {"parsed": 0, "refused": 0}
    for i in range(400):
        src = rng.choice(SHIPPED)
        tree = _mutate(yaml.safe_load(src.read_text()), rng)
        path = tmp_path / f"m{i}.yaml"
        path.write_text(yaml.safe_dump(tree, sort_keys=False) if tree is not None else "")
        try:
            recipe = parse(path)
            recipe.check_model(llama if "unlearn_stage" not in tree or "images" not in json.dumps(tree)
                               else {"surgery_arch": {}})
            outcomes["parsed"] += 1
        except SurgeryError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path)), (src.name, tree, str(e))
            outcomes["refused"] += 1
    assert outcomes["parsed"] > 20 and outcomes["refused"] > 100, outcomes
