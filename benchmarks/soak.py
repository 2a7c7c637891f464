"""Soak: do the workers' memory stay flat over a long run, and what does each executor register per minute?

    .venv/bin/python benchmarks/soak.py [--pairs 200 --size 834 --distinct 10 --early 20] [--threads 2]
                                        [--config FILE] [--executors serial,jobs2,local2]

Builds a synthetic task of ``--distinct`` pairs (``fide synth``, seed 4; cached in ``--cache``) and a descriptor
listing ``--pairs`` pairs: case k is a hard link to the images of distinct pair k mod D under its own case id, so
every pair is a separate registration with its own field. Then registers all of them, in one run, three times
(``fide.runner.register_pairs``, CPU, the default configuration or ``--config``, learned encoders where shipped):

* ``serial``: in this process, ``--threads`` threads;
* ``jobs2``: ``--jobs 2`` (2 worker processes, ``--threads`` split between them);
* ``local2``: ``--dask local:2`` (a local Dask cluster of 2 worker processes, the same split).

After every pair it reads the resident set size (``VmRSS`` of /proc/PID/status: current, not peak) of each process
that registers: this one for ``serial``, the spawned worker processes otherwise. Prints a Markdown table: wall
time, pairs per minute, per process the peak of those readings over the early window (pairs ``--early``-9 to
``--early``, 11-20 by default) and over the last 10 pairs, the worst ratio of the two peaks over the processes
(target <= 1.05), the worst ratio of the single readings after pair ``--early`` and after the last pair (the earlier
measure, for comparison), and how many fields equal the earlier runs' bit for bit (one process uses all
``--threads``, the workers 1 each at ``--threads 2``: float sums may split differently between those, not between the
two executors).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's fide, not an installed one
logger = logging.getLogger("soak")

EXECUTORS = {"serial": "one process", "jobs2": "--jobs 2", "local2": "--dask local:2"}
WINDOW = 10  # pairs in each window of RSS readings (the early one ends at --early, the late one at the last pair)


def _rss_mib(pid: int | str = "self") -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None  # the process ended
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def _workers() -> list[int]:
    """This process's descendants started by multiprocessing's spawn (the --jobs and Dask worker processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after the command name: state, ppid
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    stack, found = [os.getpid()], []
    while stack:
        for pid in children.get(stack.pop(), []):
            stack.append(pid)
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
    return sorted(found)


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
    """Register ``pairs`` with executor ``name``; wall seconds, statuses, RSS per process after every pair."""
    from fide.executors import make_executor
    from fide.runner import register_pairs

    executor = {
        "serial": lambda: make_executor(1, threads),
        "jobs2": lambda: make_executor(2, threads),
        "local2": lambda: make_executor(1, threads, dask="local:2"),
    }[name]()
    rss: list[dict[int, float]] = []

    def record(pair, result) -> None:
        pids = [os.getpid()] if name == "serial" else _workers()
        rss.append({pid: value for pid in pids if (value := _rss_mib(pid)) is not None})

    start = time.perf_counter()
    table = register_pairs(pairs, out, cfg, encoders=encoders, on_result=record, executor=executor)
    return {"seconds": time.perf_counter() - start, "table": table, "rss": rss}


def _windows(pairs: int, early: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The early and the late window of pairs (1-based, inclusive)."""
    return (max(1, early - WINDOW + 1), early), (max(1, pairs - WINDOW + 1), pairs)


def _peaks(rss: list[dict[int, float]], window: tuple[int, int]) -> dict[int, float]:
    """Per process, the largest RSS read after the pairs of ``window``."""
    peaks: dict[int, float] = {}
    for row in rss[window[0] - 1 : window[1]]:
        for pid, value in row.items():
            peaks[pid] = max(value, peaks.get(pid, 0.0))
    return peaks


def _worst_ratio(late: dict[int, float], early: dict[int, float]) -> float:
    both = set(early) & set(late)  # a process that died in between has no ratio
    return max((late[pid] / early[pid] for pid in both), default=float("nan"))


def _rss_cells(rss: list[dict[int, float]], early: int) -> tuple[str, str, str, str]:
    """Peak RSS per process over the early and the late window, the worst ratio of the two peaks over the processes,
    and the worst ratio of the single readings after pair ``early`` and after the last pair."""
    # peaks over windows, not two single readings: one reading swings with the transient allocations of the pair
    # just registered, so a ratio of two is noise of that size, not growth
    first, last = (_peaks(rss, window) for window in _windows(len(rss), early))
    show = lambda row: " / ".join(f"{row[pid]:.0f}" for pid in sorted(row))  # noqa: E731
    single = _worst_ratio(rss[-1], rss[early - 1])
    return show(first), show(last), f"{_worst_ratio(last, first):.3f}", f"{single:.3f}"


def _same(first, second) -> bool:
    return first.shape == second.shape and bool((first == second).all())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--early", type=int, default=20, help=f"the last pair of the early window ({WINDOW} pairs)")
    parser.add_argument("--distinct", type=int, default=10, help="distinct synthetic pairs behind the links")
    parser.add_argument("--size", type=int, default=834, help="side of the synthetic images, px (the challenge's)")
    parser.add_argument("--threads", type=int, help="threads in all (default: the cores this process may use)")
    parser.add_argument("--config", type=Path, help="JSON file with (part of) the FideConfig tree")
    parser.add_argument("--executors", default=",".join(EXECUTORS), help=f"comma-separated, of {list(EXECUTORS)}")
    parser.add_argument("--cache", type=Path, default=REPO / "benchmarks" / ".cache")
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
            if len(runs[name]["rss"]) < args.early:
                statuses = runs[name]["table"]["status"].value_counts().to_dict()
                raise SystemExit(f"{name}: only {len(runs[name]['rss'])} pairs registered; statuses {statuses}")
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
    early = args.early
    (a, b), (c, d) = _windows(args.pairs, early)
    print(
        f"| executor | wall s | pairs / min | peak RSS MiB, pairs {a}-{b} (per process) | peak, pairs {c}-{d} "
        f"| worst peak ratio | single-reading ratio (after pair {early}, {args.pairs}) | statuses | identical fields |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        first, last, ratio, single = _rss_cells(run["rss"], early)
        statuses = ", ".join(f"{n} {s}" for s, n in run["table"]["status"].value_counts().items())
        equal = "; ".join(same.get(name, ["reference"]))
        rate = 60 * len(pairs) / run["seconds"]
        print(
            f"| {EXECUTORS[name]} | {run['seconds']:.0f} | {rate:.2f} | {first} | {last} | {ratio} | {single} "
            f"| {statuses} | {equal} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
