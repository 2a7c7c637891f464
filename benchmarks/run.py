"""Benchmark: fide against a zero field and classical intensity-based baselines, on the same pairs, in one run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py                                 # everything: 5 x 20 synthetic 834^2 + HISTOLM
    .venv/bin/python benchmarks/run.py --tasks synthetic --synthetic-pairs 3 --methods zero,simpleitk-affine

The synthetic tasks are one per acquisition regime of ``fide synth --regime`` (whole cores, the challenge's centre
patches at ±20° and ±180°, harder affines with lab exports, mirrored slides: docs/synth.md). Prints one table
(rows = task x method) with mean / median TRE over pairs (each pair's TRE is the mean over its landmarks, as the
Learn2Reg evaluator reports it), the pairs under 2 px, the pairs flagged or failed in ``results.csv``, the pairs
over 5 px that were *not* flagged (results a user would trust wrongly), wall seconds per pair and the peak
resident memory of the process that ran the method; also writes it as CSV and Markdown (``--csv``, ``--markdown``).

Each method runs in its own child process (``--worker``), so one method's peak memory never shows in another's row;
the fields it writes are scored by the bundled evaluator (``evaluation.evaluation``), the organisers' code.
Adding a row is one line in ``methods.METHODS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from methods import DEFAULT_METHODS, METHODS, Method, RunOptions, look_up_methods

from evaluation.evaluation import evaluate, make_config
from fide.cli._common import configure_logging
from fide.io import load_dataset
from fide.runner import RESULTS_NAME

__all__ = ["METHODS", "DEFAULT_METHODS", "Method", "RunOptions", "run_method", "score", "main"]

logger = logging.getLogger("benchmark")

BENCH_DIR = Path(__file__).resolve().parent
CACHE = BENCH_DIR / ".cache"
DEFAULT_HISTOLM = Path(__file__).resolve().parents[2] / "shared" / "data" / "HISTOLM"
# synthetic tasks by regime (fide synth --regime): "synthetic" is the whole-core task ("core") of earlier tables
SYNTHETIC_REGIMES = {
    "synthetic": "core",
    "patch20": "patch20",
    "patch180": "patch180",
    "hard": "hard",
    "mirror": "mirror",
    "decoupled": "decoupled",
    "decoupled-patch20": "decoupled-patch20",
}
TASKS = (*SYNTHETIC_REGIMES, "histolm")
WORKER_INFO = "worker.json"


def _look_up_tasks(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown tasks {unknown}; expected a comma list of {list(TASKS)}")
    return names


# ------------------------------------------------------------------------------------------------------- worker
def run_method(name: str, dataset: Path, out: Path, pairs: int | None, options: RunOptions) -> pd.DataFrame:
    """Run method ``name`` on the first ``pairs`` val pairs of ``dataset`` (all when None), in this process.

    Writes the fields and ``results.csv`` into ``out``, and ``worker.json`` (warm-up seconds, GPU peak memory).

    Returns:
        The results table; its ``seconds`` column is the wall time per pair.
    """
    method = METHODS[name]
    selected = load_dataset(dataset).split("val")[:pairs]
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, float | None] = {"warm_up_s": None, "gpu_peak_mb": None}
    if method.warm_up is not None:
        start = time.perf_counter()
        method.warm_up()
        info["warm_up_s"] = time.perf_counter() - start
    if options.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    table = method.run(selected, out, options)
    if options.device.startswith("cuda"):
        info["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    (out / WORKER_INFO).write_text(json.dumps(info))
    return table


def _worker(args: argparse.Namespace) -> int:
    options = RunOptions(device=args.device, features=args.features)
    table = run_method(args.method, args.dataset, args.out, args.pairs, options)
    return 0 if len(table) else 1


# ------------------------------------------------------------------------------------------------------ parent
def synthetic_task(pairs: int, size: int, seed: int, cache: Path = CACHE, regime: str = "core") -> Path:
    """The descriptor of a cached ``fide synth`` task (generated on first use; a marker file flags completion)."""
    from fide.synth import make_task

    suffix = "" if regime == "core" else f"-{regime}"  # the whole-core cache keeps its earlier name
    folder = cache / f"synth-{size}px-{pairs}pairs-seed{seed}{suffix}"
    marker = folder / ".complete"
    if marker.is_file():
        return Path(marker.read_text().strip())
    logger.info("generating %d %s pairs at %d^2 (seed %d) into %s", pairs, regime, size, seed, folder)
    descriptor = make_task(folder, pairs, size, seed, regime=regime)
    marker.write_text(str(descriptor))
    return descriptor


def _spawn(name: str, dataset: Path, out: Path, args: argparse.Namespace) -> tuple[int, float, float]:
    """Run one method in a child process; returns (exit code, peak resident memory of that child in MB, wall s)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--method", name]
    command += ["--dataset", str(dataset), "--out", str(out), "--device", args.device]
    command += ["--pairs", str(args.pairs)] if args.pairs else []
    command += ["--features", args.features] if args.features else []
    command += ["--verbose"] if args.verbose else []
    start = time.perf_counter()
    process = subprocess.Popen(command)
    # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be the maximum over every child so far
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024, time.perf_counter() - start  # ru_maxrss: KiB on Linux


def score(dataset: Path, out: Path, pairs: int | None) -> dict[str, float]:
    """Per-pair TRE (mean over the pair's landmarks, pixels) of the fields in ``out``, by the bundled evaluator,
    keyed by the evaluator's case name (``results.csv``'s ``pair``)."""
    config = make_config(dataset, "val")
    config["eval_pairs"] = config["eval_pairs"][:pairs]
    if not any(m["metric"] == "tre" for m in config["evaluation_methods"]):
        raise ValueError(f"{dataset}: no landmark CSVs, so no TRE")
    result = evaluate(out, dataset.parent, config)
    return {key: case["TRE_lm"]["mean"] for key, case in result["cases"].items()}


def _row(task: str, name: str, dataset: Path, out: Path, args: argparse.Namespace) -> dict:
    method = METHODS[name]
    row = {"task": task, "method": method.label, "mean TRE": np.nan, "median TRE": np.nan, "< 2 px": ""}
    row.update({"flagged": "", "> 5 px not flagged": "", "s/pair": np.nan, "peak MB": np.nan, "note": ""})
    reason = method.unavailable()
    if reason:
        logger.warning("%s: skipped (%s)", method.label, reason)
        return {**row, "note": f"skipped: {reason}"}
    logger.info("%s / %s: running in a child process", task, method.label)
    for stale in [*out.glob("disp_*.nii.gz"), out / RESULTS_NAME, out / WORKER_INFO]:  # from an earlier run
        stale.unlink(missing_ok=True)
    code, peak_mb, wall = _spawn(name, dataset, out, args)
    results_path = out / RESULTS_NAME
    if code != 0 or not results_path.is_file():
        return {**row, "peak MB": peak_mb, "note": f"worker exited with code {code}"}
    results = pd.read_csv(results_path, keep_default_na=False)
    per_pair = score(dataset, out, args.pairs)
    tre = np.asarray(list(per_pair.values()))
    status = dict(zip(results["pair"].astype(str), results["status"]))
    flagged = {pair for pair, value in status.items() if value in ("flagged", "failed")}
    missed = sum(1 for pair, value in per_pair.items() if value > 5 and pair not in flagged)
    info = json.loads((out / WORKER_INFO).read_text())
    notes = []
    failed = int((results["status"] == "failed").sum())
    if failed:
        notes.append(f"{failed} failed (zero field)")
    if info.get("warm_up_s"):
        notes.append(f"one-off warm-up {info['warm_up_s']:.0f} s excluded")
    if info.get("gpu_peak_mb"):
        notes.append(f"GPU peak {info['gpu_peak_mb']:.0f} MB")
    logger.info("%s / %s: mean TRE %.3f px, child wall %.0f s", task, method.label, tre.mean(), wall)
    return {
        **row,
        "mean TRE": float(tre.mean()),
        "median TRE": float(np.median(tre)),
        "< 2 px": f"{int((tre < 2).sum())}/{len(tre)}",
        "flagged": f"{len(flagged & set(per_pair))}/{len(tre)}",
        "> 5 px not flagged": str(missed),
        "s/pair": float(results["seconds"].astype(float).mean()),
        "peak MB": peak_mb,
        "note": "; ".join(notes),
    }


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub Markdown table, numbers with 2 decimals (MB as integers), empty cells for missing values."""

    def cell(column: str, value: object) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.0f}" if column == "peak MB" else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    for _, values in table.iterrows():
        lines.append("| " + " | ".join(cell(c, values[c]) for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def _datasets(args: argparse.Namespace) -> dict[str, Path]:
    datasets = {}
    for task in args.tasks:
        if task in SYNTHETIC_REGIMES:
            regime = SYNTHETIC_REGIMES[task]
            datasets[task] = synthetic_task(args.synthetic_pairs, args.size, args.seed, args.cache, regime)
        else:
            descriptor = args.histolm / "HISTOLM_dataset.json"
            if not descriptor.is_file():
                raise SystemExit(f"benchmark: no {descriptor}; pass --histolm PATH or --tasks synthetic")
            datasets[task] = descriptor
    return datasets


def _benchmark(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    rows = []
    for task, dataset in _datasets(args).items():
        for name in args.methods:
            rows.append(_row(task, name, dataset, args.out / task / name, args))
    table = pd.DataFrame(rows)
    header = (
        f"fide benchmark, {datetime.now():%Y-%m-%d %H:%M}: fide on {args.device}, baselines on CPU; "
        f"{os.cpu_count()} CPU cores; TRE in pixels (mean over each pair's landmarks), then mean/median over pairs"
    )
    print(header)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    csv_path = args.csv or args.out / "benchmark.csv"
    markdown_path = args.markdown or args.out / "benchmark.md"
    for path in (csv_path, markdown_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path, index=False, float_format="%.4f")
    markdown_path.write_text(f"{header}\n\n{to_markdown(table)}")
    logger.info("table written to %s and %s; total wall %.0f s", csv_path, markdown_path, time.perf_counter() - start)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=_look_up_tasks, default=list(TASKS), help="comma list of " + ",".join(TASKS))
    parser.add_argument(
        "--methods",
        type=look_up_methods,
        default=list(DEFAULT_METHODS),
        help=f"comma list or 'all'; default {','.join(DEFAULT_METHODS)}; known: {','.join(METHODS)}",
    )
    parser.add_argument("--synthetic-pairs", type=int, default=20, help="pairs of each synthetic task")
    parser.add_argument("--size", type=int, default=834, help="side of the synthetic images, pixels")
    parser.add_argument("--seed", type=int, default=2025, help="seed of the synthetic tasks")
    parser.add_argument("--cache", type=Path, default=CACHE, help="folder of the generated synthetic tasks")
    parser.add_argument("--histolm", type=Path, default=DEFAULT_HISTOLM, help="HISTOLM task folder")
    parser.add_argument("--pairs", type=int, default=None, help="use only the first N pairs of each task")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the fide rows")
    parser.add_argument(
        "--features", choices=["auto", "learned", "handcrafted"], help="encoder.features of unpinned fide rows"
    )
    parser.add_argument("--out", type=Path, default=CACHE / "results", help="fields per task/method, and the tables")
    parser.add_argument("--csv", type=Path, help="table as CSV (default OUT/benchmark.csv)")
    parser.add_argument("--markdown", type=Path, help="table as Markdown (default OUT/benchmark.md)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    worker = parser.add_argument_group("worker mode (one method in this process; used by the benchmark itself)")
    worker.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    worker.add_argument("--method", choices=sorted(METHODS), help="method to run")
    worker.add_argument("--dataset", type=Path, help="<TASK>_dataset.json whose val pairs are registered")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.pairs is not None and args.pairs < 1:
        raise SystemExit(f"benchmark: --pairs must be >= 1, got {args.pairs}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark: --device cuda requested but no CUDA device is available")
    if args.worker:
        if args.method is None or args.dataset is None:
            raise SystemExit("benchmark: --worker needs --method and --dataset")
        return _worker(args)
    return _benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
