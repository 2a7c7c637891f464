"""The engine's development tasks: the synthetic pairs the search, selection and confidence were built on.

Usage (from the repository root; ~30 min on 2 cores, tasks generated into ``--cache`` on first use)::

    .venv/bin/python benchmarks/dev_tasks.py --out /tmp/dev-new.csv
    .venv/bin/python benchmarks/dev_tasks.py --out /tmp/dev-try.csv --config try.json --compare /tmp/dev-new.csv
    .venv/bin/python benchmarks/dev_tasks.py --tasks hard,mirror --out /tmp/dev-hm.csv

210 pairs of 834 px in thirteen tasks, one per regime and seed below (docs/synth.md), never the benchmark's seed 2025:
the benchmark (``run.py``) measures, these tasks are where changes are tried. Every pair runs as the benchmark's
fide row does (``register_pairs``, default config unless ``--config``), in this one process; each pair's TRE comes
from the bundled evaluator. Prints one row per task (mean / median TRE, pairs under 2 px, flagged, over 5 px and
not flagged, under 2 px and flagged, seconds a pair) and the mean seconds a pair of each pipeline stage; writes one CSV
row per pair. ``--compare`` prints, per task, the mean TRE before and after and each pair that crossed 2 px or
whose flag changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from run import CACHE, score

from fide.cli._common import configure_logging, seed_everything
from fide.config import FideConfig, config_from_dict
from fide.features import ModalityEncoders
from fide.features.select import resolve_encoders
from fide.io import load_dataset
from fide.runner import register_pairs
from fide.synth import make_task

# name: (regime, seed, pairs, warp_px); the warp_px 0 tasks are exactly affine, to see the registration's own error
DEV_TASKS = {
    "patch20": ("patch20", 31, 10, 4.0),
    "patch20-2": ("patch20", 41, 20, 4.0),
    "patch180": ("patch180", 31, 10, 4.0),
    "patch180-2": ("patch180", 41, 20, 4.0),
    "hard": ("hard", 31, 10, 4.0),
    "mirror": ("mirror", 31, 10, 4.0),
    "core": ("core", 7, 10, 4.0),
    "nowarp_core": ("core", 51, 10, 0.0),
    "nowarp_hard": ("hard", 52, 10, 0.0),
    # the real failure (issue 25): SHG fibre texture independent of the bright field's, coarse layout shared
    "decoupled": ("decoupled", 61, 20, 4.0),
    "decoupled-patch20": ("decoupled-patch20", 62, 20, 4.0),
    # more of the same (2026-12-03): the failing regimes hold the pairs an engine change must be judged on
    "decoupled-2": ("decoupled", 63, 30, 4.0),
    "decoupled-patch20-2": ("decoupled-patch20", 64, 30, 4.0),
}


def dev_task(name: str, cache: Path) -> Path:
    """The descriptor of development task ``name``, generated into ``cache`` on first use."""
    regime, seed, pairs, warp_px = DEV_TASKS[name]
    folder = cache / f"dev-{name}-seed{seed}"
    marker = folder / ".complete"
    if not marker.is_file():
        descriptor = make_task(folder, pairs, 834, seed, regime=regime, warp_px=warp_px)
        marker.write_text(str(descriptor))
    return Path(marker.read_text().strip())


def run_task(name: str, cfg: FideConfig, encoders: ModalityEncoders | None, dataset: Path, out: Path) -> pd.DataFrame:
    """Register every val pair of the task at ``dataset``; one row per pair: TRE, status, confidence, seconds per
    stage and the evidence on the pose (``e_`` columns)."""
    stages: dict[str, dict[str, float]] = {}
    seed_everything(cfg.seed)  # per task: a task's fields do not depend on which tasks ran before it

    def keep_stages(pair, result) -> None:
        stages[pair.name] = {
            **{f"s_{k}": v for k, v in result.seconds.items()},
            **{f"e_{k}": v for k, v in result.scores.items()},
        }

    pairs = load_dataset(dataset).split("val")
    table = register_pairs(pairs, out / name, cfg, encoders=encoders, on_result=keep_stages)
    tre = score(dataset, out / name, None)
    table.insert(0, "task", name)
    table.insert(2, "tre", table["pair"].map(tre))
    stage_table = pd.DataFrame.from_dict(stages, orient="index")
    return table.join(stage_table, on="pair")


def summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per task from the per-pair table."""

    def row(group: pd.DataFrame) -> pd.Series:
        flagged = group["status"].isin(["flagged", "failed"])
        return pd.Series(
            {
                "pairs": len(group),
                "mean TRE": group["tre"].mean(),
                "median TRE": group["tre"].median(),
                "< 2 px": int((group["tre"] < 2).sum()),
                "flagged": int(flagged.sum()),
                "> 5 px not flagged": int(((group["tre"] > 5) & ~flagged).sum()),
                "< 2 px flagged": int(((group["tre"] < 2) & flagged).sum()),
                "s/pair": group["seconds"].astype(float).mean(),
            }
        )

    table = pairs.groupby("task", sort=False)[pairs.columns].apply(row)
    table.loc["all"] = row(pairs)
    counts = ["pairs", "< 2 px", "flagged", "> 5 px not flagged", "< 2 px flagged"]
    return table.astype({column: int for column in counts})


def compare(before: pd.DataFrame, after: pd.DataFrame) -> str:
    """Per-task mean TRE before / after, and the pairs that crossed 2 px or changed flag."""
    merged = before.merge(after, on=["task", "pair"], suffixes=("_before", "_after"))
    lines = []
    for task, group in merged.groupby("task", sort=False):
        lines.append(f"{task}: mean TRE {group['tre_before'].mean():.3f} -> {group['tre_after'].mean():.3f} px")
        for _, r in group.iterrows():
            crossed = (r["tre_before"] < 2) != (r["tre_after"] < 2)
            if crossed or r["status_before"] != r["status_after"]:
                lines.append(
                    f"  {r['pair']}: {r['tre_before']:.2f} px {r['status_before']} -> "
                    f"{r['tre_after']:.2f} px {r['status_after']}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(DEV_TASKS), help="comma list of " + ",".join(DEV_TASKS))
    parser.add_argument("--config", type=Path, help="JSON of config values over the defaults (as fide --config)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="folder of the generated tasks")
    parser.add_argument("--out", type=Path, required=True, help="per-pair CSV; fields go beside it")
    parser.add_argument("--compare", type=Path, help="an earlier per-pair CSV to compare with")
    parser.add_argument("--histolm", type=Path, help="also the real HISTOLM pairs (task folder), as task 'histolm'")
    args = parser.parse_args(argv)
    configure_logging(False)
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DEV_TASKS))
    if unknown:
        raise SystemExit(f"dev_tasks: unknown tasks {unknown}; expected some of {list(DEV_TASKS)}")
    cfg = config_from_dict(json.loads(args.config.read_text())) if args.config else FideConfig()
    fields = args.out.with_suffix("")
    encoders = resolve_encoders(cfg.encoder, torch.device("cpu"))
    datasets = {name: dev_task(name, args.cache) for name in names}
    if args.histolm:
        datasets["histolm"] = args.histolm / "HISTOLM_dataset.json"
    pairs = pd.concat(
        [run_task(name, cfg, encoders, dataset, fields) for name, dataset in datasets.items()], ignore_index=True
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_csv(args.out, index=False, float_format="%.4f")
    print(summary(pairs).to_string(float_format=lambda v: f"{v:.3f}"))
    stage_columns = [c for c in pairs.columns if c.startswith("s_")]
    print("mean seconds per stage:", ", ".join(f"{c[2:]} {pairs[c].fillna(0).mean():.2f}" for c in stage_columns))
    if args.compare:
        print(compare(pd.read_csv(args.compare, keep_default_na=False), pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
