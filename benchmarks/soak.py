"""Soak: do the workers' memory stay flat over a long run, and what does each executor register per minute?

    .venv/bin/python benchmarks/soak.py [--pairs 200 --size 834 --distinct 10 --early 20] [--threads 2]
                                        [--config FILE] [--executors serial,jobs2,local2] [--readings CSV]

Builds a synthetic task of ``--distinct`` pairs (``fide synth``, seed 4; cached in ``--cache``) and a descriptor
listing ``--pairs`` pairs: case k is a hard link to the images of distinct pair k mod D under its own case id, so
every pair is a separate registration with its own field. Then registers all of them, in one run, three times
(``fide.runner.register_pairs``, CPU, the default configuration or ``--config``, learned encoders where shipped):

* ``serial``: in this process, ``--threads`` threads;
* ``jobs2``: ``--jobs 2`` (2 worker processes, ``--threads`` split between them);
* ``local2``: ``--dask local:2`` (a local Dask cluster of 2 worker processes, the same split).

Each pair runs through :func:`fide.pair_task.process_pair` as ``fide register`` runs it, wrapped so that the process
that registered it reads its own resident set size (``VmRSS`` of /proc/self/status: current, not peak) right after
the pair and logs it with the case. A pair's memory depends on the pair, and a worker registers whichever pairs the
scheduler gives it, so readings are compared per process over the *same* distinct pairs: for each distinct pair
the process registered more than once after pair ``--early``, its first such reading (early) and its last (late).
Prints a Markdown table: wall time, pairs per minute, per process the peak of the early readings and of the late
readings over those matched pairs, the worst ratio of the two over the processes (target <= 1.05), and how many
fields equal the earlier runs' bit for bit (one process uses all ``--threads``, the workers 1 each at ``--threads 2``:
float sums may split differently between those, not between the two executors).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's fide, not an installed one
logger = logging.getLogger("soak")

EXECUTORS = {"serial": "one process", "jobs2": "--jobs 2", "local2": "--dask local:2"}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True)
class _Measured:
    """``worker(pair, encoders)`` for register_pairs: the pair as ``fide register`` registers it, then one line
    ``pid case RSS`` appended to ``log`` by the process that registered it (a single write: whole lines)."""

    output: Path
    cfg: object
    log: Path

    def __call__(self, pair, encoders=None):
        from fide.pair_task import PairTask, process_pair

        outcome, result = process_pair(PairTask(pair, self.output / pair.disp_name, self.cfg, encoders=encoders))
        case = int(pair.fixed.name.split("_")[1])  # SOAK_<case>_0000.nii.gz
        handle = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(handle, f"{os.getpid()} {case} {_rss_mib():.1f}\n".encode())
        finally:
            os.close(handle)
        if result is None:
            raise ValueError(outcome.message)  # the pair's own reason, as the outer row's message
        return result


def _long_task(cache: Path, folder: Path, pairs: int, distinct: int, size: int) -> Path:
    """Descriptor of ``pairs`` pairs whose images are hard links to ``distinct`` synthetic pairs (same file system)."""
    from fide.io import load_dataset
    from fide.synth import make_task

    source_dir = cache / f"soak-{distinct}x{size}"
    source = source_dir / "SYNTHSHGBF_dataset.json"
    if not source.is_file():
        source = make_task(source_dir, distinct, size, seed=4)
    originals = load_dataset(source).split("val")
    images = folder / "imagesTr"
    images.mkdir(parents=True)
    entries = []
    for k in range(pairs):
        original = originals[k % len(originals)]
        names = [f"SOAK_{k + 1:04d}_0000.nii.gz", f"SOAK_{k + 1:04d}_0001.nii.gz"]
        for name, image in zip(names, (original.fixed, original.moving)):
            os.link(image, images / name)  # a hard link: the descriptor's resolved path keeps the new case id
        entries.append({"fixed": f"./imagesTr/{names[0]}", "moving": f"./imagesTr/{names[1]}"})
    descriptor = folder / "SOAK_dataset.json"
    descriptor.write_text(json.dumps({"name": "SOAK", "registration_val": entries}))
    return descriptor


def _soak(name: str, pairs, out: Path, cfg, encoders, threads: int) -> dict:
    """Register ``pairs`` with executor ``name``; wall seconds, the table, (pid, case, RSS) after every pair."""
    from fide.executors import make_executor
    from fide.runner import register_pairs

    executor = {
        "serial": lambda: make_executor(1, threads),
        "jobs2": lambda: make_executor(2, threads),
        "local2": lambda: make_executor(1, threads, dask="local:2"),
    }[name]()
    log = out.parent / f"{name}.rss"
    worker = _Measured(out, cfg, log)
    start = time.perf_counter()
    table = register_pairs(pairs, out, cfg, encoders=encoders, worker=worker, executor=executor)
    seconds = time.perf_counter() - start
    readings = [(int(pid), int(case), float(rss)) for pid, case, rss in map(str.split, log.read_text().splitlines())]
    return {"seconds": seconds, "table": table, "rss": readings}


def _matched(readings: list[tuple[int, int, float]], early: int, distinct: int) -> dict[int, tuple[float, float, int]]:
    """Per process: the peak of its first readings after each distinct pair past case ``early``, the peak of its
    last readings after the same distinct pairs, and how many distinct pairs those are (each needs two readings)."""
    seen: dict[int, dict[int, list[float]]] = {}
    for pid, case, rss in readings:  # in the order each process wrote them
        if case > early:
            seen.setdefault(pid, {}).setdefault(case % distinct, []).append(rss)
    peaks = {}
    for pid, by_pair in seen.items():
        both = [values for values in by_pair.values() if len(values) >= 2]
        if both:
            peaks[pid] = (max(v[0] for v in both), max(v[-1] for v in both), len(both))
    return peaks


def _rss_cells(readings: list[tuple[int, int, float]], early: int, distinct: int) -> tuple[str, str, str]:
    """Early and late peaks per process (with the matched distinct pairs) and the worst late / early ratio."""
    # the same distinct pairs early and late: a worker's pairs are whichever the scheduler gave it, and a window of
    # its last pairs may hold the pairs that need the most memory while its early window held none of them
    peaks = _matched(readings, early, distinct)
    pids = sorted(peaks)
    first = " / ".join(f"{peaks[pid][0]:.0f} ({peaks[pid][2]})" for pid in pids)
    last = " / ".join(f"{peaks[pid][1]:.0f}" for pid in pids)
    worst = max((peaks[pid][1] / peaks[pid][0] for pid in pids), default=float("nan"))
    return first or "-", last or "-", f"{worst:.3f}"


def _same(first, second) -> bool:
    return first.shape == second.shape and bool((first == second).all())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--early", type=int, default=20, help="readings count from the pair after this one")
    parser.add_argument("--distinct", type=int, default=10, help="distinct synthetic pairs behind the links")
    parser.add_argument("--size", type=int, default=834, help="side of the synthetic images, px (the challenge's)")
    parser.add_argument("--threads", type=int, help="threads in all (default: the cores this process may use)")
    parser.add_argument("--config", type=Path, help="JSON file with (part of) the FideConfig tree")
    parser.add_argument("--executors", default=",".join(EXECUTORS), help=f"comma-separated, of {list(EXECUTORS)}")
    parser.add_argument("--cache", type=Path, default=REPO / "benchmarks" / ".cache")
    parser.add_argument("--readings", type=Path, help="also write every reading here (CSV: executor, pid, case, MiB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    names = args.executors.split(",")
    if set(names) - set(EXECUTORS) or not 1 <= args.early < args.pairs:
        raise SystemExit(f"--executors must be of {list(EXECUTORS)} and 1 <= --early < --pairs")

    import fide.cli  # noqa: F401 - fide's own GOMP_SPINCOUNT default, as for the commands
    from fide.cli._common import seed_everything
    from fide.config import FideConfig, config_from_dict
    from fide.features.select import resolve_encoders
    from fide.io import load_dataset, read_disp
    from fide.io.fields import atomic_path
    from fide.resources import configure_threads

    threads = configure_threads(args.threads)
    seed_everything(0)
    cfg = config_from_dict(json.loads(args.config.read_text())) if args.config else FideConfig()
    encoders = resolve_encoders(cfg.encoder)
    args.cache.mkdir(parents=True, exist_ok=True)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="soak-", dir=args.cache) as tmp:  # beside the cache: hard links work
        descriptor = _long_task(args.cache, Path(tmp) / "task", args.pairs, args.distinct, args.size)
        pairs = load_dataset(descriptor).split("val")
        for name in names:
            logger.warning("%s: %d pairs", EXECUTORS[name], len(pairs))
            runs[name] = _soak(name, pairs, Path(tmp) / name, cfg, encoders, threads)
            if not _matched(runs[name]["rss"], args.early, args.distinct):
                statuses = runs[name]["table"]["status"].value_counts().to_dict()
                raise SystemExit(f"{name}: no distinct pair registered twice after pair {args.early}; {statuses}")
            if args.readings:  # rewritten after each executor: a long soak keeps what it measured if stopped
                rows = [f"{n},{pid},{case},{rss}" for n, run in runs.items() for pid, case, rss in run["rss"]]
                partial = atomic_path(args.readings)
                partial.write_text("executor,pid,case,rss_mib\n" + "\n".join(rows) + "\n")
                os.replace(partial, args.readings)
        # fields bit-identical to an earlier run's: one process, and --jobs 2 (the same 1 thread per worker)
        root, same = Path(tmp), {}
        for name in names:
            for other in [n for n in ("serial", "jobs2") if n in names[: names.index(name)]]:
                equal = sum(_same(*(read_disp(root / n / p.disp_name) for n in (other, name))) for p in pairs)
                same.setdefault(name, []).append(f"{equal}/{len(pairs)} = {EXECUTORS[other]}")
    features = "learned" if encoders is not None else "handcrafted"
    print(
        f"\n{args.pairs} pairs of {args.size} px, {threads} threads in all, CPU, {features} features, config "
        f"{args.config.name if args.config else 'default'}, {time.strftime('%Y-%m-%d')}\n"
    )
    print(
        f"| executor | wall s | pairs / min | peak RSS MiB after each distinct pair, first time after pair "
        f"{args.early} (per process; matched pairs) | the same pairs, last time | worst ratio | statuses "
        "| identical fields |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        first, last, ratio = _rss_cells(run["rss"], args.early, args.distinct)
        statuses = ", ".join(f"{n} {s}" for s, n in run["table"]["status"].value_counts().items())
        equal = "; ".join(same.get(name, ["reference"]))
        rate = 60 * len(pairs) / run["seconds"]
        print(
            f"| {EXECUTORS[name]} | {run['seconds']:.0f} | {rate:.2f} | {first} | {last} | {ratio} | {statuses} "
            f"| {equal} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
