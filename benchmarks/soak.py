"""Soak: does one process's memory stay flat over a long run? Resident memory after each of N pairs.

    .venv/bin/python benchmarks/soak.py [--pairs 200 --size 128 --distinct 10] [--quick] [--threads 2]

Builds a synthetic task of ``--distinct`` pairs (``fide synth``, seed 4; cached in ``--cache``) and a descriptor
listing ``--pairs`` pairs: case k is a hard link to the images of distinct pair k mod D under its own case id, so
every pair is a separate registration with its own field. Then, in this one process, runs
``fide.runner.register_pairs`` with the default configuration (learned encoders where shipped), CPU, and reads
the resident set size (``VmRSS`` of /proc/self/status: current, not peak) after every pair through the
``on_result`` callback. Small images keep 200 pairs feasible on a laptop CPU; leaks per pair (tables, caches,
graphs kept alive) show at any size.

Prints RSS at a few pairs and the ratio RSS(last) / RSS(``--early``, default pair 20); target <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's fide, not an installed one
logger = logging.getLogger("soak")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--early", type=int, default=20, help="the pair whose RSS is the reference")
    parser.add_argument("--distinct", type=int, default=10, help="distinct synthetic pairs behind the links")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic images, px")
    parser.add_argument("--threads", type=int, help="default: fide's (the cores this process may use)")
    parser.add_argument("--quick", action="store_true", help="30 pairs, reference pair 10: a smoke run")
    parser.add_argument("--cache", type=Path, default=REPO / "benchmarks" / ".cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.pairs, args.early = 30, 10

    from fide.cli._common import seed_everything
    from fide.config import FideConfig
    from fide.features.select import resolve_encoders
    from fide.io import load_dataset
    from fide.resources import configure_threads
    from fide.runner import register_pairs

    threads = configure_threads(args.threads)
    seed_everything(0)
    cfg = FideConfig()
    rss: list[float] = []
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-", dir=args.cache) as tmp:  # beside the cache: hard links work
        descriptor = _long_task(args.cache, Path(tmp) / "task", args.pairs, args.distinct, args.size)
        pairs = load_dataset(descriptor).split("val")
        encoders = resolve_encoders(cfg.encoder)
        record = lambda pair, result: rss.append(_rss_mib())  # noqa: E731
        table = register_pairs(pairs, Path(tmp) / "out", cfg, encoders=encoders, on_result=record)
    if len(rss) < args.early:
        raise SystemExit(f"only {len(rss)} pairs registered; statuses: {table['status'].value_counts().to_dict()}")
    marks = sorted({1, args.early, *range(50, len(rss) + 1, 50), len(rss)})
    print(f"\n{len(rss)} pairs of {args.size} px in one process ({threads} threads), default config, CPU\n")
    print("| after pair | RSS MiB |")
    print("|---|---|")
    for mark in marks:
        print(f"| {mark} | {rss[mark - 1]:.0f} |")
    ratio = rss[-1] / rss[args.early - 1]
    print(f"\nRSS after pair {len(rss)} / after pair {args.early}: {ratio:.3f} (target <= 1.10)")
    print(f"seconds per pair: {table['seconds'].mean():.2f} (statuses {table['status'].value_counts().to_dict()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
