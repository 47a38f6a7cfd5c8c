"""Write (and optionally execute) the four walkthrough notebooks from the cell sources below.

    python notebooks/make.py            # write the .ipynb files (no outputs)
    python notebooks/make.py --execute  # write and execute them in place (full settings)

`SURGERY_NOTEBOOK_SMALL=1` makes every notebook pick small settings (what CI executes, see
tests/test_notebooks.py); the committed outputs come from the full settings on the reference
models. The CIFAR-10 notebook and the full settings of the DDPM one need `SURGERY_DATA_DIR`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

SETUP = """\
import os
import time
import warnings

warnings.filterwarnings("ignore")  # tqdm's widget notice, transformers' deprecations

import matplotlib
import matplotlib.pyplot as plt
import torch
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # "Loading weights" bars

SMALL = os.environ.get("SURGERY_NOTEBOOK_SMALL") == "1"  # CI's quick settings
torch.manual_seed(0)
print("small settings" if SMALL else "full settings")"""

LM_SETUP = """

from surgery.data import text as textdata
from surgery.data.windows import calib_windows, eval_windows, tokenize
from surgery.evaluate import compare
from surgery.reference import load_reference

# full: the Shakespeare reference LM on the held-out plays; small: the embedded demo LM
NAME = "demo-lm" if SMALL else "shakespeare-lm"
model, tok, path = load_reference(NAME, progress=False)
texts = textdata.embedded() if SMALL else textdata.shakespeare()
SEQLEN = 128 if SMALL else 256  # the length each model was trained at
train_ids = tokenize(tok, textdata.join(texts["train"]))
test = {"test": eval_windows(tokenize(tok, textdata.join(texts["test"])), SEQLEN, 16 if SMALL else 64)}
calib = calib_windows(train_ids, 16 if SMALL else 64, SEQLEN, seed=0)"""

UNLEARN = [
    ("md", """\
# Unlearning a CIFAR-10 class with SalUn

SalUn ([Fan et al., 2024](https://arxiv.org/abs/2310.12508)) makes a classifier forget by training
with **random labels** on the forget set (and normal labels on the retain set), but lets only the
weights that matter most to the forget loss move: the top half of |∇ forget loss|, computed by the
shared scorer (`surgery.score(kind="abs_grad", loss="neg_ce")`). Everything outside the mask stays
**bit-identical** — momentum and weight decay included, unlike the official code.

This walkthrough forgets class 1 (automobile) from the CIFAR-10 reference ResNet and compares SalUn
with plain Random Label (RL, no mask). Metrics as in the paper: UA = 100 − forget accuracy, RA and
TA (test set without the class), MIA-Efficacy (share of forget samples an SVC on the true-label
confidence calls non-members)."""),
    ("code", SETUP + """

from surgery.data.images import cifar10
from surgery.reference import load_reference
from surgery.unlearn import UnlearnConfig, saliency_mask, unlearn
from surgery.unlearn.metrics import classifier_metrics
from surgery.unlearn.splits import class_split

FORGET_CLASS = 1
# full: the reference ResNet-8 (15 epochs); small: the same architecture after 1 epoch
model, _, path = load_reference("cifar10-resnet", progress=False, **({"epochs": 1} if SMALL else {}))
train, test = cifar10("train"), cifar10("test")
if SMALL:  # a seeded subsample keeps CI fast
    g = torch.Generator().manual_seed(0)
    train = train.subset(torch.randperm(len(train), generator=g)[:4000])
    test = test.subset(torch.randperm(len(test), generator=g)[:2000])
f, r = class_split(train, FORGET_CLASS)
forget, retain = train.subset(f), train.subset(r)
test_r = test.subset(torch.nonzero(test.y != FORGET_CLASS).flatten())
print(f"{path.name}: forget {len(forget)} images of class {train.classes[FORGET_CLASS]!r}, "
      f"retain {len(retain)}, test without the class {len(test_r)}")
before = classifier_metrics(model, forget, retain, test_r)
before"""),
    ("md", """\
## The saliency mask

The mask is the top 50 % (global) of |Σ ∇ forget loss|. Its density differs a lot between layers:
SalUn spends its budget where the forget class lives."""),
    ("code", """\
cfg = UnlearnConfig(method="salun", density=0.5, epochs=1 if SMALL else 2, lr=0.01, batch_size=128,
                    augment=True)
mask = saliency_mask(model, forget, cfg)
dens = mask.densities()
names = [n for n in dens if n.endswith("weight")]
fig, ax = plt.subplots(figsize=(9, 3))
ax.bar(range(len(names)), [dens[n] for n in names])
ax.set_xticks(range(len(names)), [n.replace(".weight", "") for n in names], rotation=70, fontsize=7)
ax.axhline(mask.density, color="k", lw=0.8, ls="--", label=f"global density {mask.density:.2f}")
ax.set_ylabel("share of weights in the mask"); ax.legend(); ax.set_title("SalUn mask density per layer")
plt.tight_layout(); plt.show()"""),
    ("md", "## SalUn against Random Label, on copies of the same model"),
    ("code", """\
import copy
import dataclasses

results = {"original": before}
models = {}
for name, c in (("RL (no mask)", dataclasses.replace(cfg, method="rl")), ("SalUn", cfg)):
    m = copy.deepcopy(model)
    res = unlearn(m, c, forget, retain, mask=mask if c.masked else None, progress=False)
    results[name] = {**classifier_metrics(m, forget, retain, test_r), "RTE s": res.seconds}
    models[name] = m

# frozen means frozen: every weight outside the mask is bit-identical after SalUn
moved = {n: (p != dict(model.named_parameters())[n]) for n, p in models["SalUn"].named_parameters()}
outside = sum(int((moved[n] & ~mask[n]).sum()) for n in mask)
print(f"weights changed outside the mask: {outside}")
assert outside == 0
print("| model | UA | RA | TA | MIA-Eff | RTE s |\\n|---|---|---|---|---|---|")
for name, m in results.items():
    print(f"| {name} | {m['UA']:.2f} | {m['RA']:.2f} | {m['TA']:.2f} | {m['MIA']:.2f} | "
          f"{m.get('RTE s', 0):.1f} |")"""),
    ("code", """\
keys = ["UA", "RA", "TA", "MIA"]
fig, ax = plt.subplots(figsize=(7, 3))
w = 0.8 / len(results)
for j, (name, m) in enumerate(results.items()):
    ax.bar([k + j * w for k in range(len(keys))], [m[k] for k in keys], w, label=name)
ax.set_xticks([k + w for k in range(len(keys))], keys); ax.set_ylabel("%"); ax.legend()
ax.set_title(f"forgetting class {FORGET_CLASS}: original vs unlearned")
plt.tight_layout(); plt.show()"""),
    ("md", """\
What to look for: UA rises towards 100 (the class is forgotten) while RA and TA stay close to the
original. The gold standard is a model retrained without the class (`method="retrain"`); see
`benchmarks/unlearn_cifar10.py` and BENCHMARKS.md for the Table-1 comparison with Avg. Gap."""),
]

QUANT = [
    ("md", """\
# 2-bit quantization: RTN, GPTQ, ApiQ and ApiQ + saliency

ApiQ ([Liao et al., 2024](https://arxiv.org/abs/2402.05147)) quantizes block by block, training the
clipping range and a LoRA adapter jointly so that the quantized block reproduces the full-precision
block's outputs. The saliency-aware variant ([Cao & Aref, 2025](https://arxiv.org/abs/2504.13932))
adds λ·Σ F⊙(Q(W) − W)², with F the diagonal Fisher of the LM loss from the shared scorer, so that
salient weights stay close to their full-precision values.

Model: the Shakespeare reference LM (6 layers, GQA) on the held-out plays; small settings use the
embedded demo LM."""),
    ("code", SETUP + LM_SETUP + """

from surgery.models.adapters import DecoderAdapter
from surgery.saliency import score

print(f"{NAME}: {sum(p.numel() for p in model.parameters()):,} parameters, seqlen {SEQLEN}, "
      f"{calib.shape[0]} calibration windows")"""),
    ("md", "## Where the Fisher mass is: the regulariser's F per layer and projection"),
    ("code", """\
adapter = DecoderAdapter(model)
roles = ["q", "k", "v", "o", "gate", "up", "down"]
names = [[f"{n}.weight" for n in adapter.block_linears(i)] for i in range(adapter.num_layers)]  # in role order
fisher = score(model, calib.split(1), loss="causal_lm", kind="fisher",
               include=["^" + w.replace(".", r"\\.") + "$" for row in names for w in row], progress=False)
per = fisher.per_tensor()
mass = torch.tensor([[per[w] for w in row] for row in names])
fig, ax = plt.subplots(figsize=(6, 3))
im = ax.imshow(mass / mass.sum(), cmap="viridis", norm=matplotlib.colors.LogNorm())
ax.set_xticks(range(len(roles)), roles); ax.set_ylabel("block"); fig.colorbar(im, label="share of Σ F")
ax.set_title("diagonal Fisher mass (saliency density) per layer"); plt.tight_layout(); plt.show()"""),
    ("code", """\
from surgery.quantize import ApiQConfig, GPTQConfig, RTNConfig, quantize

W2 = dict(num_bits=2, group_size=64)
APIQ = dict(epochs=2 if SMALL else 4, lr_lwc=1e-2, lr_lora=2e-3, lora_rank=8, **W2)
methods = {"RTN": RTNConfig(**W2), "GPTQ (act-order)": GPTQConfig(act_order=True, **W2),
           "ApiQ": ApiQConfig(**APIQ), "ApiQ + saliency": ApiQConfig(saliency={"lam": 10.0}, **APIQ)}
reports = [compare.evaluate_lm(model, test, "dense", speed=False)]
quantized = {}
for name, cfg in methods.items():
    q, _, _ = load_reference(NAME, progress=False)
    sal = isinstance(cfg, ApiQConfig) and cfg.saliency.enabled
    result = quantize(q, cfg, calib=calib, fisher=fisher if sal else None, batch_size=8, progress=False)
    rep = compare.evaluate_lm(q, test, f"{name} W2g64", dense=model, speed=False)
    rep.metrics["calib_s"] = result.seconds
    reports.append(rep)
    quantized[name] = (q, result)
print(compare.to_markdown(reports))"""),
    ("code", """\
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
labels = [r.name.replace(" W2g64", "") for r in reports]
axes[0].bar(labels, [r.metrics["ppl:test"] for r in reports], color=["grey"] + ["C0"] * (len(reports) - 1))
axes[0].set_ylim(0.95 * reports[0].metrics["ppl:test"], None); axes[0].set_ylabel("perplexity (held out)")
axes[1].bar(labels[1:], [r.metrics["kl"] for r in reports[1:]]); axes[1].set_ylabel("KL to dense")
for ax in axes:
    ax.tick_params(axis="x", rotation=30)
fig.suptitle("dense vs 2-bit (groups of 64)"); plt.tight_layout(); plt.show()"""),
    ("md", """\
## Export: compressed-tensors `pack-quantized` + a PEFT adapter, loaded back by `transformers`"""),
    ("code", """\
import tempfile

from peft import PeftModel
from transformers import AutoModelForCausalLM

from surgery.evaluate.cost import size_on_disk
from surgery.quantize.save import export

q, result = quantized["ApiQ + saliency"]
with tempfile.TemporaryDirectory() as tmp:
    export(q, result, f"{tmp}/w2", tokenizer=tok)  # packed weights + adapter/ (the LoRA, for PEFT)
    back = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(f"{tmp}/w2"), f"{tmp}/w2/adapter").eval()
    ids = test["test"][:2]
    with torch.no_grad():
        diff = (back(input_ids=ids).logits - q(input_ids=ids).logits).abs().max().item()
    base = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"max |Δ logits| after reload: {diff:.2e}; folder {size_on_disk(f'{tmp}/w2') / 1e6:.2f} MB "
          f"vs {base / 1e6:.2f} MB of fp32 weights")
    assert diff < 1e-3"""),
]

PRUNE = [
    ("md", """\
# 50 % structural pruning with a Týr-style search

Týr-the-Pruner ([Li et al., 2025](https://arxiv.org/abs/2503.09657)) builds a **supernet**: every
sub-layer (a block's attention and FFN) is pruned at several sparsity levels by a local solver
(OBS + least squares, block by block on the inputs of the model being pruned), then an evolutionary
search picks one level per sub-layer under an exact global budget, minimising the KL to the dense
model. Units are single
query heads (a KV head leaves with its last query head, and counts in the budget) and FFN neurons,
so the result is **physically sliced**: smaller matrices, loadable with
`AutoModelForCausalLM.from_pretrained` after `import surgery`.

Here: 50 % of the decoder-block linear weights, uniform sparsity vs the searched distribution."""),
    ("code", SETUP + LM_SETUP + """

from surgery.prune import PruneConfig, SearchConfig, prune

dense = model
search = calib_windows(train_ids, 16 if SMALL else 32, SEQLEN, seed=1)
SEARCH = SearchConfig(generations=3 if SMALL else 8, offspring=4 if SMALL else 12,
                      stage_windows=[2, 4, 16] if SMALL else [4, 8, 32], top_k=64)
common = dict(sparsity=0.5, search_samples=search.shape[0])"""),
    ("code", """\
uniform_model, _, _ = load_reference(NAME, progress=False)
uniform = prune(uniform_model, PruneConfig(**common, start="uniform", iterations=0, search=SEARCH), calib, search,
                progress=False)
searched_model, _, _ = load_reference(NAME, progress=False)
t0 = time.time()
searched = prune(searched_model, PruneConfig(**common, iterations=1 if SMALL else 2, search=SEARCH), calib, search,
                 progress=False)
print(f"search: {time.time() - t0:.0f} s; fitness (KL) per iteration:",
      [round(it["fitness"], 4) for it in searched.iterations], "uniform:", round(uniform.iterations[-1]["fitness"], 4))"""),
    ("md", "## The searched sparsity per layer"),
    ("code", """\
lay = searched.per_layer()
attn = searched.layout.of_kind("attn")  # query + KV heads (one weight unit each), or KV groups
ffn_total = searched.layout.of_kind("mlp")[0].units
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
x = [r["layer"] for r in lay]
axes[0].bar(x, [searched.distribution[s.key] / s.units for s in attn]); axes[0].set_title("attention sparsity (weights)")
axes[1].bar(x, [1 - r["neurons_kept"] / ffn_total for r in lay], color="C1"); axes[1].set_title("FFN sparsity (neurons)")
for ax in axes[:2]:
    ax.axhline(0.5, color="k", lw=0.8, ls="--"); ax.set_xlabel("block"); ax.set_ylim(0, 1)
hist = [h["fitness"] for it in searched.iterations for h in it["history"]]
axes[2].plot(hist, marker="."); axes[2].set_title("best fitness per generation"); axes[2].set_xlabel("generation")
axes[2].set_ylabel("KL (top-k)"); plt.tight_layout(); plt.show()"""),
    ("code", """\
small_uniform, small_searched = uniform.slice(), searched.slice()
reports = [compare.evaluate_lm(dense, test, "dense"),
           compare.evaluate_lm(small_uniform, test, "uniform 50% (sliced)", dense=dense),
           compare.evaluate_lm(small_searched, test, "searched 50% (sliced)", dense=dense)]
print(compare.to_markdown(reports))
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
names = [r.name.replace(" (sliced)", "") for r in reports]
for ax, key, label in zip(axes, ["ppl:test", "params", "prefill_tok_s"], ["perplexity", "parameters", "prefill tokens/s"]):
    ax.bar(names, [r.metrics[key] for r in reports], color=["grey", "C0", "C1"]); ax.set_title(label)
    ax.tick_params(axis="x", rotation=20)
plt.tight_layout(); plt.show()"""),
    ("md", """\
Perplexity on a few dozen windows is a coarse measure: two models can land on nearly the same mean NLL
while their per-window NLLs differ, and the KL to dense (what the search minimises) still separates
them. BENCHMARKS.md reports all held-out windows and WikiText-2."""),
    ("md", "## Saved, reloaded with `transformers`, equal logits"),
    ("code", """\
import tempfile

from transformers import AutoModelForCausalLM

import surgery  # registers the per-layer-width (sliced) decoders
from surgery.models import save_model

with tempfile.TemporaryDirectory() as tmp:
    save_model(small_searched, f"{tmp}/pruned", tokenizer=tok)
    back = AutoModelForCausalLM.from_pretrained(f"{tmp}/pruned").eval()
    ids = test["test"][:2]
    with torch.no_grad():
        diff = (back(input_ids=ids).logits - small_searched(input_ids=ids).logits).abs().max().item()
    masked = (searched_model(input_ids=ids).logits - small_searched(input_ids=ids).logits).abs().max().item()
print(f"{type(back).__name__}: max |Δ logits| reload {diff:.2e}, sliced vs masked {masked:.2e}")
assert diff == 0 and masked < 1e-4"""),
]

GENERATION = [
    ("md", """\
# Forgetting a digit in a diffusion model with SalUn

SalUn's second half ([Fan et al., 2024](https://arxiv.org/abs/2310.12508), §5): a class-conditional
DDPM must stop drawing one class when asked for it, and keep drawing the others. The objective is
the random-label analogue — for images of the forgotten class, the noise the model predicts *given
that class* is pulled towards what it predicts given another class — plus the ordinary diffusion
loss on the retained classes. SalUn lets only the salient weights move: the top half of
|∇ diffusion loss| on the forgotten class, from the same scorer as everywhere in `surgery`.

The model is a diffusers `UNet2DModel` trained here on MNIST at 16×16 px (`mnist-ddpm`), judged by a
classifier of real 16-px MNIST (`mnist16-cnn`): **UA** = share of images generated for the
forgotten digit that the judge does *not* call that digit."""),
    ("code", SETUP + """

import copy

from surgery.data.images import load_images
from surgery.evaluate.generation import generation_metrics
from surgery.reference import load_reference
from surgery.unlearn import UnlearnConfig, saliency_mask, unlearn
from surgery.unlearn.splits import class_split

FORGET_CLASS = 0
# full: MNIST at 16 px; small (CI): scikit-learn's 8×8 digits and a briefly trained DDPM
DDPM, JUDGE, DATA = ("digits-ddpm", "digits-mlp", "digits") if SMALL else ("mnist-ddpm", "mnist16-cnn", "mnist")
model, _, path = load_reference(DDPM, progress=False)
judge, _, _ = load_reference(JUDGE, progress=False)
size = model.config.sample_size
train, test = load_images(DATA, "train", None, size), load_images(DATA, "test", None, size)
f, r = class_split(train, FORGET_CLASS)
forget, retain = train.subset(f), train.subset(r)
N_FORGET, PER_CLASS, STEPS = (50, 10, 10) if SMALL else (250, 50, 25)
judged = lambda m: generation_metrics(m, judge, FORGET_CLASS, test, N_FORGET, PER_CLASS, STEPS, 2.0, seed=0)
before = judged(model)
print(f"{path.name}: {sum(p.numel() for p in model.parameters()):,} weights; forget {len(forget)} images of "
      f"digit {FORGET_CLASS}, retain {len(retain)}")
before.summary()"""),
    ("md", """\
## The saliency mask

The mask is the top 50 % (global) of |Σ ∇ ‖ε − ε_θ(x_t | 0)‖²| over noised images of the digit 0."""),
    ("code", """\
cfg = UnlearnConfig(method="salun", density=0.5, steps=20 if SMALL else 200, lr=1e-3, batch_size=64,
                    optimizer="adamw", weight_decay=0.0, alpha=1.0, relabel="other")
mask = saliency_mask(model, forget, cfg)
dens = mask.densities()
names = [n for n in dens if n.endswith("weight")]
fig, ax = plt.subplots(figsize=(10, 3))
ax.bar(range(len(names)), [dens[n] for n in names])
ax.set_xticks(range(len(names)), [n.replace(".weight", "") for n in names], rotation=90, fontsize=5)
ax.axhline(mask.density, color="k", lw=0.8, ls="--", label=f"global density {mask.density:.2f}")
ax.set_ylabel("share in the mask"); ax.legend(); ax.set_title("SalUn mask density per tensor (UNet)")
plt.tight_layout(); plt.show()"""),
    ("md", "## SalUn against the same objective without the mask (RL), on copies of the model"),
    ("code", """\
import dataclasses

reports, models = {"original": before}, {}
for name, c in (("RL (no mask)", dataclasses.replace(cfg, method="rl")), ("SalUn", cfg)):
    m = copy.deepcopy(model)
    res = unlearn(m, c, forget, retain, mask=mask if c.masked else None, progress=False)
    reports[name], models[name] = judged(m), m
    print(f"{name}: {res.seconds:.1f} s")

# frozen means frozen: every weight outside the mask is bit-identical after SalUn
old = dict(model.named_parameters())
outside = sum(int(((p != old[n]) & ~mask[n]).sum()) for n, p in models["SalUn"].named_parameters())
print(f"weights changed outside the mask: {outside}")
assert outside == 0
print("| model | UA % | retained-class accuracy % | judge-feature FID |\\n|---|---|---|---|")
for name, rep in reports.items():
    print(f"| {name} | {rep.UA:.1f} | {rep.retain_acc:.1f} | {rep.feature_fid:.2f} |")"""),
    ("code", """\
rows = [("original: digit 0", before.forget_images)]
rows += [(f"{n}: digit 0", rep.forget_images) for n, rep in reports.items() if n != "original"]
rows += [("SalUn: retained digits", reports["SalUn"].retain_images[:, 0])]
fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.1 * len(rows)))
for ax, (title, imgs) in zip(axes, rows):
    strip = torch.cat(list(imgs[:, 0]), dim=1)
    ax.imshow(strip, cmap="gray", vmin=0, vmax=1); ax.set_axis_off(); ax.set_title(title, fontsize=8, loc="left")
plt.tight_layout(); plt.show()"""),
    ("md", """\
## The unlearned model is a plain diffusers folder

`surgery.models.save_model` writes the UNet and its noise schedule; diffusers loads them without
`surgery` (this is what a recipe's output folder holds, with the mask and `samples.png` beside it)."""),
    ("code", """\
import tempfile

from diffusers import DDPMScheduler, UNet2DModel

from surgery.models import save_model

with tempfile.TemporaryDirectory() as tmp:
    save_model(models["SalUn"], f"{tmp}/salun")
    back, sched = UNet2DModel.from_pretrained(f"{tmp}/salun"), DDPMScheduler.from_pretrained(f"{tmp}/salun")
x, t, c = torch.randn(4, 1, size, size), torch.tensor([10, 200, 500, 900]), torch.tensor([0, 1, 2, 10])
with torch.no_grad():
    diff = (back(x, t, class_labels=c).sample - models["SalUn"](x, t, class_labels=c).sample).abs().max().item()
print(f"reloaded with plain diffusers: max |Δε| = {diff:.1e}; schedule {sched.config.num_train_timesteps} steps")
assert diff == 0"""),
    ("md", """\
What to look for: UA close to 100 % (the digit 0 is no longer drawn when asked for) with retained-class
accuracy and the judge-feature FID close to the original's. The numbers over three seeds, with
Retrain, FT and ESD, are in BENCHMARKS.md (`benchmarks/unlearn_generation.py`)."""),
]

NOTEBOOKS = {"unlearn_cifar10_class.ipynb": UNLEARN, "quantize_2bit.ipynb": QUANT,
             "prune_50.ipynb": PRUNE, "unlearn_ddpm_mnist.ipynb": GENERATION}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 3600) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--execute", action="store_true")
    ap.add_argument("--only", nargs="*", choices=list(NOTEBOOKS))
    args = ap.parse_args()
    for name, cells in NOTEBOOKS.items():
        if args.only and name not in args.only:
            continue
        nb = build(cells)
        if args.execute:
            print(f"executing {name} ...", file=sys.stderr, flush=True)
            execute(nb, HERE)
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    main()
