"""Pruning benchmark at 25 % and 50 % structural sparsity: the Shakespeare reference LM (default) or
stories260K, a real pretrained Llama (`--model stories260K`: held-out TinyStories text and WikiText-2).

Sparsity = share of the decoder-block linear weights removed (q, k, v, o, gate, up, down). Methods
on the same units (KV groups, FFN neurons) and the same per-type budget: uniform sparsity with our
local solver (expectation accumulation, no search), Wanda-sp, FLAP-style, and the full search.
Ablations at 50 %: accumulation mode (uniform 50 % levels everywhere, no search), search
iterations 1–4, saliency-seeded vs uniform start. Speed: the sliced model against dense in the
same process. Results are appended to the JSON as they finish (a killed run resumes).

    SURGERY_DATA_DIR=../shared/data python benchmarks/prune_shakespeare.py [--model stories260K] \
        [--sparsities 0.25 0.5] [--max-windows N] [--no-ablations]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import MODELS, RESULTS, add_runs, model_path, stamp
from _prune_report import report

from surgery.data import read_text
from surgery.errors import SurgeryError
from surgery.data.windows import eval_windows, mixed_calib_windows, tokenize
from surgery.evaluate import kl_divergence, perplexity, throughput
from surgery.models.adapters import DecoderAdapter
from surgery.prune import PruneConfig, SearchConfig, prune
from surgery.prune.baselines import flap, wanda_sp
from surgery.prune.units import dist_to_json
from surgery.models import load_model

SEQLEN = 256
KL_WINDOWS = 64
ABLATION_ITERATIONS = 2
# The rows are named from this setting: KV-group units and expectation inputs, the defaults until
# 2026-12-01. The defaults of 2026-12-01 to 12-07 (`attn_unit: auto`, `accumulation: none`) are the run
# "search head units + dense inputs" on GQA models; the present ones (`accumulation: centre`,
# `target_inputs: pruned`) "search head units + sequential inputs, pruned target".
# (Their accumulated inputs were fitted to the dense model's outputs: `target_inputs: dense`.)
SEARCH = dict(search_samples=64, iterations=4, generations=12, offspring=16, attn_unit="kv_group",
              accumulation="expectation", target_inputs="dense")
SEARCH_ABLATIONS = {"uniform start": dict(start="uniform"), "tyr ladder": dict(ffn_min_step=32)}
# query-head units alone, then with every other choice of Týr's released code (uniform start, dense
# supernet inputs, its 32-neuron ladder floor)
HEAD_UNITS = {"head units": dict(attn_unit="head"),
              "head units + tyr settings": dict(attn_unit="head", start="uniform", accumulation="none",
                                                ffn_min_step=32)}
HEAD_ABLATIONS = {"head units + uniform start": dict(attn_unit="head", start="uniform"),
                  "head units + dense inputs": dict(attn_unit="head", accumulation="none"),
                  "head units + tyr ladder": dict(attn_unit="head", ffn_min_step=32)}
HEAD_RUNS = {**HEAD_UNITS, **HEAD_ABLATIONS}
# is the search budget the limit? the 2026-12-01 defaults (dense inputs) with 4× the generations, or 2× the iterations
BUDGET_RUNS = {"head units + dense inputs, 4x generations": dict(attn_unit="head", accumulation="none",
                                                                  generations=48),
               "head units + dense inputs, 8 iterations": dict(attn_unit="head", accumulation="none", iterations=8),
               # or the fitness too noisy? four times the fitness windows at every selection stage
               "head units + dense inputs, 4x fitness windows": dict(attn_unit="head", accumulation="none",
                                                                     search_samples=256, stage_windows=[8, 32, 128]),
               "head units + dense inputs, 8x fitness windows": dict(attn_unit="head", accumulation="none",
                                                                     search_samples=512, stage_windows=[16, 64, 256]),
               # the pool alone: the default selection stages (2 / 8 / 32 windows) drawn from a larger pool
               "head units + dense inputs, 8x fitness pool": dict(attn_unit="head", accumulation="none",
                                                                  search_samples=512),
               # Týr's released selection (128 offspring, survivors 16 / 4, 2,048 / 16,384 / 131,072 tokens
               # = 8 / 64 / 512 windows of 256) at our 12 generations per iteration
               "head units + dense inputs, Tyr's selection": dict(attn_unit="head", accumulation="none",
                                                                  search_samples=512, offspring=128,
                                                                  survivors=[16, 4], stage_windows=[8, 64, 512]),
               # the solver fitted less closely to the calibration text (damping chosen from --uniform-damps)
               "head units + dense inputs, damp 0.03": dict(attn_unit="head", accumulation="none", damp=0.03)}
# the solver's unit saliency with Týr's first-order term, |⟨XᵀY, W⟩| (`first_order: output`), in the 2026-12-01 defaults
SALIENCY_RUNS = {"head units + dense inputs, output saliency": dict(attn_unit="head", accumulation="none",
                                                                     first_order="output"),
                 # and in the sequential calibration (the defaults since 2026-12-07, later)
                 "head units + sequential inputs, pruned target, output saliency": dict(
                     attn_unit="head", accumulation="centre", target_inputs="pruned", first_order="output")}
# accumulated supernet inputs (2026-12-07): the centre candidate's (exact sequential calibration for the
# centre) or the expectation, each with the solver fitting the dense layer on those inputs (`pruned`)
# or the dense model's outputs (`dense`)
INPUT_RUNS = {f"head units + {name} inputs, {target} target": dict(attn_unit="head", accumulation=mode,
                                                                   target_inputs=target)
              for name, mode in (("sequential", "centre"), ("expectation", "expectation"))
              for target in ("pruned", "dense")}
# every named variant of the full search ("search <name>"; "default" is plain "search"), for --variants
VARIANTS = {"default": {}, "accumulation=none": dict(accumulation="none"), **SEARCH_ABLATIONS, **HEAD_RUNS,
            **BUDGET_RUNS, **SALIENCY_RUNS, **INPUT_RUNS}
SEARCH_FIELDS = ("generations", "offspring", "survivors", "stage_windows", "top_k", "prescreen", "resample")


def prune_config(sparsity: float, **kw) -> PruneConfig:
    """The benchmark's setting with `kw` changed (search fields go to the SearchConfig)."""
    kw = {**SEARCH, **kw}
    search = SearchConfig(**{k: kw.pop(k) for k in SEARCH_FIELDS if k in kw})
    return PruneConfig(sparsity=sparsity, search=search, **kw)


class Bench:
    def __init__(self, out: Path, model: str = "shakespeare-lm", max_windows: int | None = None,
                 calib: list[str] | None = None, search_pool: int = 64) -> None:
        self.out = out
        self.runs: dict = json.loads(out.read_text())["runs"] if out.exists() else {}
        _, calib_text, sets, _ = MODELS[model]
        self.model_name, self.max_windows = model, max_windows
        self.calib_sources = calib or [calib_text]
        self.path = model_path(model)
        _, tok = load_model(self.path)
        self.train = [tokenize(tok, read_text(src)) for src in self.calib_sources]  # token ids per text
        self.calib = mixed_calib_windows(self.train, 64, SEQLEN, seed=0)
        self.search = mixed_calib_windows(self.train, search_pool, SEQLEN, seed=1)
        self.sets = {k: eval_windows(tokenize(tok, read_text(v)), SEQLEN, max_windows) for k, v in sets.items()}
        self.dense = self.fresh()
        self.vocab = self.dense.config.vocab_size

    def fresh(self) -> torch.nn.Module:
        return load_model(self.path)[0].eval()

    def evaluate(self, model: torch.nn.Module, sets: tuple[str, ...] = ("test", "wikitext2")) -> dict:
        out = {f"ppl_{k}": perplexity(model, self.sets[k], batch_size=32) for k in sets}
        out["kl_test"] = kl_divergence(self.dense, model, self.sets["test"][:KL_WINDOWS], batch_size=32)
        out["block_params"] = DecoderAdapter(model).block_linear_params()
        out["params"] = sum(p.numel() for p in model.parameters())
        return out

    def record(self, key: str, row: dict) -> None:
        self.runs[key] = row  # with the runs other processes added to the file meanwhile
        self.runs = add_runs(self.out, self.runs, {**stamp(), "model": self.model_name,
                                                   "max_windows": self.max_windows,
                                                   "calibration": self.calib_sources})
        short = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                 if k not in ("per_layer", "iterations", "history")}
        print(f"{key}: {json.dumps(short, default=str)}", flush=True)

    def baseline(self, key: str, fn, sparsity: float) -> None:
        if key in self.runs:
            return
        model = self.fresh()
        t = time.time()
        counts = fn(model, sparsity, self.calib)
        seconds = time.time() - t
        row = self.evaluate(model)
        row["block_params"] = row["block_params"] - _removed(model, counts)
        self.record(key, {**row, "seconds": seconds, "distribution": dist_to_json(counts)})

    def ours(self, key: str, sparsity: float, speed: bool = False, **kw) -> None:
        if key in self.runs:
            return
        model = self.fresh()
        per_iteration = []

        def each(t: int, result) -> None:
            per_iteration.append({"iteration": t, "ppl_test": perplexity(model, self.sets["test"], batch_size=32),
                                  "ppl_wikitext2": perplexity(model, self.sets["wikitext2"], batch_size=32),
                                  "fitness": result.iterations[-1]["fitness"],
                                  "seconds": result.iterations[-1]["seconds"]})

        cfg = prune_config(sparsity, **kw)
        if len(self.search) < cfg.search_samples:
            raise SystemExit(f"{key}: needs {cfg.search_samples} fitness windows; run with --search-pool "
                             f"{cfg.search_samples}")
        t = time.time()
        result = prune(model, cfg, self.calib, self.search, progress=False, on_iteration=each)
        seconds = time.time() - t
        small = result.slice()
        row = self.evaluate(small)
        budget = result.layout.denominator - result.removed_params
        if row["block_params"] != budget:  # what is compared must have the same weight count
            raise SystemExit(f"{key}: the sliced model has {row['block_params']:,} block weights, the budget {budget:,}")
        masked_ppl = perplexity(model, self.sets["test"][:8], batch_size=8)
        row["sliced_equals_masked"] = abs(masked_ppl - perplexity(small, self.sets["test"][:8], batch_size=8)) \
            < 1e-6 * masked_ppl
        row.update(seconds=seconds, achieved_sparsity=result.achieved_sparsity, per_iteration=per_iteration,
                   per_layer=result.per_layer(), history=[it["history"] for it in result.iterations])
        if speed:
            dense_s, small_s = throughput(self.dense, self.vocab), throughput(small, self.vocab)
            again = throughput(self.dense, self.vocab)  # dense measured on both sides of the sliced run
            dense_s = {k: max(dense_s[k], again[k]) for k in dense_s}
            row["speed"] = {"dense": dense_s, "sliced": small_s,
                            "ratio": {k: small_s[k] / dense_s[k] for k in dense_s}}
        self.record(key, row)

    def torch_pruning(self, key: str, folder: str, sparsity: float, setting: str, limit_s: int = 600) -> None:
        """The peer, stopped after `limit_s` (torch-pruning 1.6.1 never finishes on this model)."""
        if key in self.runs:
            return
        import signal
        import importlib.metadata as md

        if folder not in sys.path:
            sys.path.insert(0, folder)
        import torch_pruning as tp
        from peers.torch_pruning_llm import torch_pruning

        version = next(d.version for d in md.distributions(path=[folder]) if d.metadata["Name"] == "torch-pruning")

        def stop(*_):
            raise TimeoutError

        signal.signal(signal.SIGALRM, stop)
        signal.alarm(limit_s)
        t = time.time()
        try:
            model, notes = torch_pruning(self.fresh, tp, sparsity, self.calib[:1], setting)
        except TimeoutError:
            self.record(key, {"failed": f"torch-pruning {version} did not finish in {limit_s} s", "version": version})
            return
        finally:
            signal.alarm(0)
        seconds = time.time() - t
        self.record(key, {**self.evaluate(model), "seconds": seconds, "version": version, **notes})


    def tyr(self, key: str, clone: str, sparsity: float, seed: int = 0) -> None:
        """Týr's own supernet + search (benchmarks/peers/tyr_official.py) with our calibration, fitness
        windows, search budget and top-k; its result composed into a fresh model and measured here."""
        if key in self.runs:
            return
        from _common import PeakRSS
        from peers.tyr_official import compose, physical_block_params, run_tyr

        cfg = prune_config(sparsity).search
        t = time.time()
        with PeakRSS() as mem:
            res = run_tyr(self.path, clone, sparsity, self.calib, self.search, self.sets["test"][:8],
                          iterations=SEARCH["iterations"], generations=cfg.generations, offspring=cfg.offspring,
                          stage_tokens=tuple(w * SEQLEN for w in cfg.stage_windows), survivors=(*cfg.survivors, 1),
                          kl_topk=min(cfg.top_k, self.vocab), seed=seed)
        seconds = time.time() - t
        model = self.fresh()
        compose(model, res["weights"])
        row = {**self.evaluate(model), **physical_block_params(model)}  # block_params: as sliced physically
        self.record(key, {**row, "seconds": seconds, "peak_rss_extra_mib": mem.extra, "levels": res["levels"],
                          "iterations": res["iterations"], "commit": res["commit"]})


def open_bench(ap: argparse.ArgumentParser, out: Path, args: argparse.Namespace) -> Bench:
    """The benchmark's model and data, or one `error:` line (exit 2) for a bad window count or text."""
    pool = getattr(args, "search_pool", 64)
    if (args.max_windows is not None and args.max_windows < 1) or pool < 1:
        ap.error(f"--max-windows / --search-pool must be positive, got {args.max_windows} / {pool}")
    try:
        return Bench(out, args.model, args.max_windows, args.calib, pool)
    except SurgeryError as e:
        ap.error(str(e))


def _removed(model: torch.nn.Module, counts: dict) -> int:
    from surgery.prune.units import layout

    lay = layout(DecoderAdapter(model))
    return lay.removed_params(counts)


def _method_runs(b: Bench, s: float, args: argparse.Namespace) -> None:
    """Every run at sparsity `s` but the seeded search variants (all skipped when already in the JSON)."""
    b.ours(f"{s}/uniform+solver", s, start="uniform", iterations=0)
    b.baseline(f"{s}/wanda-sp", wanda_sp, s)
    b.baseline(f"{s}/flap", flap, s)
    b.ours(f"{s}/search", s, speed=True)
    if args.fixed_windows:
        b.ours(f"{s}/search fixed windows", s, resample=False)
    # ablations at 50 %; expectation accumulation is the uniform+solver run above
    if s == 0.5 and not args.no_ablations:
        for mode in ("none", "centre"):
            b.ours(f"ablation/accumulation={mode}", 0.5, start="uniform", iterations=0,
                   accumulation=mode)
        # start and pre-screen ablations: the first ABLATION_ITERATIONS iterations (CPU time), to
        # set beside the same iterations of the full saliency-started search
        b.ours("ablation/search-from-uniform", 0.5, start="uniform", iterations=ABLATION_ITERATIONS)
        b.ours("ablation/search-saliency-prescreen", 0.5, prescreen=0.5,
               iterations=ABLATION_ITERATIONS)
    if args.tyr:
        b.tyr(f"{s}/tyr official", args.tyr, s)
    if args.search_dense_inputs:  # as Týr's released code builds its supernet (peers/tyr_official.py)
        b.ours(f"{s}/search accumulation=none", s, accumulation="none")
    if args.search_ablations:  # Týr's choices, one at a time, in our full search
        for name, kw in SEARCH_ABLATIONS.items():
            b.ours(f"{s}/search {name}", s, **kw)
    for damp in args.uniform_damps:  # the solver's Hessian damping: fit to the calibration text vs generality
        b.ours(f"{s}/uniform+solver head units + dense inputs, damp {damp}", s, start="uniform", iterations=0,
               attn_unit="head", accumulation="none", damp=damp)
    if args.head_units:
        b.ours(f"{s}/uniform+solver head units", s, start="uniform", iterations=0, attn_unit="head")
    if args.head_units or args.uniform_first_order:
        # the 2026-12-01 defaults' own uniform model: what their search is measured against
        b.ours(f"{s}/uniform+solver head units + dense inputs", s, start="uniform", iterations=0, attn_unit="head",
               accumulation="none")
    if args.uniform_inputs:  # the uniform model of each INPUT_RUNS variant
        for name, kw in INPUT_RUNS.items():
            b.ours(f"{s}/uniform+solver {name}", s, start="uniform", iterations=0, **kw)
    if args.uniform_first_order:  # the same with Týr's output term in the solver's unit saliency
        for name, kw in SALIENCY_RUNS.items():
            b.ours(f"{s}/uniform+solver {name}", s, start="uniform", iterations=0, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--model", default="shakespeare-lm", choices=list(MODELS))
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--max-windows", type=int, help="cap on evaluation windows per text")
    ap.add_argument("--no-ablations", action="store_true", help="skip the 50 % ablations")
    ap.add_argument("--calib", nargs="+", help="calibration and fitness texts, drawn evenly (default: the model's)")
    ap.add_argument("--search-pool", type=int, default=64,
                    help="fitness windows drawn (the rows so far: 64; the '4x / 8x fitness windows' variants: "
                         "256 / 512)")
    ap.add_argument("--fixed-windows", action="store_true",
                    help="also run the search on fixed fitness windows (resample: false) at every sparsity")
    ap.add_argument("--out", help="results JSON (default: results/prune_<model>.json)")
    ap.add_argument("--torch-pruning", metavar="DIR",
                    help="folder holding torch-pruning (pip install --no-deps --target DIR torch-pruning==1.5.2)")
    ap.add_argument("--tyr", metavar="CLONE",
                    help="also run Týr's own code from this local clone (benchmarks/peers/tyr_official.py)")
    ap.add_argument("--search-dense-inputs", action="store_true",
                    help="also the full search with accumulation=none (supernet inputs from the dense model)")
    ap.add_argument("--tyr-at", type=float, nargs="+", default=[], metavar="S",
                    help="with --tyr: its code alone at these sparsities too (to match our weight count)")
    ap.add_argument("--tyr-seeds", type=int, nargs="+", default=[0], metavar="N",
                    help="with --tyr-at: its search's --seed (one run per seed and sparsity)")
    ap.add_argument("--search-ablations", action="store_true",
                    help="our full search with one of Týr's choices each: its uniform start, its 32-neuron "
                         "floor on the FFN ladder")
    ap.add_argument("--head-units", action="store_true",
                    help="also uniform+solver and the full search with query-head attention units (Týr's unit)")
    ap.add_argument("--head-ablations", action="store_true",
                    help="the search with query-head units and one other choice of Týr's code at a time")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="search seeds for the query-head runs and --variants (seed s > 0 adds ' seed s' to the name)")
    ap.add_argument("--variants", nargs="+", default=[], choices=list(VARIANTS),
                    help="full-search variants to run at every sparsity and seed")
    ap.add_argument("--oracle-fitness", action="store_true",
                    help="run --variants with the fitness drawn from all the held-out in-domain test windows "
                         "(' oracle fitness' in the name): a bound on what a search over this supernet can "
                         "reach in domain, not a method")
    ap.add_argument("--uniform-damps", type=float, nargs="+", default=[], metavar="D",
                    help="also uniform+solver (query heads, dense inputs) with these Hessian dampings")
    ap.add_argument("--uniform-inputs", action="store_true",
                    help="also uniform+solver (query heads) with accumulated supernet inputs (centre or expectation) "
                         "and each solver target (pruned or dense inputs)")
    ap.add_argument("--uniform-first-order", action="store_true",
                    help="also uniform+solver (query heads) with the solver's output-correlation first-order term, "
                         "on dense inputs and in the sequential calibration (and the dense-input default term)")
    ap.add_argument("--table-only", action="store_true", help="print the tables from the JSON; run nothing")
    args = ap.parse_args()
    if args.tyr_at and not args.tyr:
        ap.error("--tyr-at needs --tyr CLONE")
    if args.oracle_fitness and (not args.variants or args.tyr or args.torch_pruning or args.uniform_damps
                                or args.uniform_first_order or args.uniform_inputs):
        ap.error("--oracle-fitness runs --variants only (no --tyr, --torch-pruning or --uniform-* runs)")
    if any(not 0 <= d < 1 for d in args.uniform_damps):
        ap.error(f"--uniform-damps: each damping must be in [0, 1), got {args.uniform_damps}")
    torch.manual_seed(0)
    default = "prune_shakespeare.json" if args.model == "shakespeare-lm" else f"prune_{args.model}.json"
    b = open_bench(ap, Path(args.out or RESULTS / default), args)
    if args.oracle_fitness:  # every held-out test window is a fitness window
        b.search = b.sets["test"]
    if "dense" not in b.runs:
        b.record("dense", b.evaluate(b.dense))
    if not args.table_only:
        for s in args.sparsities:
            if not args.oracle_fitness:  # only the variants run on test-text fitness
                _method_runs(b, s, args)
            runs = {**(HEAD_UNITS if args.head_units else {}), **(HEAD_ABLATIONS if args.head_ablations else {}),
                    **{v: VARIANTS[v] for v in args.variants}}
            for seed in args.seeds:
                for name, kw in runs.items():
                    key = (f"{s}/search" + ("" if name == "default" else f" {name}")
                           + (" oracle fitness" if args.oracle_fitness else "") + (f" seed {seed}" if seed else ""))
                    b.ours(key, s, seed=seed, **(dict(kw, search_samples=len(b.search)) if args.oracle_fitness else kw))
            if args.torch_pruning:
                for setting in ("units", "official"):
                    b.torch_pruning(f"{s}/torch-pruning {setting}", args.torch_pruning, s, setting)
        for x in args.tyr_at:
            for seed in args.tyr_seeds:
                b.tyr(f"matched/tyr official at {x}" + (f" seed {seed}" if seed else ""), args.tyr, x, seed)
    variants = [*HEAD_RUNS, *BUDGET_RUNS, *SALIENCY_RUNS, *INPUT_RUNS]
    variants += [f"{v} oracle fitness" for v in variants]
    text = report(b.runs, args.sparsities, variants, list(SEARCH_ABLATIONS))
    b.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
