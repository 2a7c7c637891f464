"""Do concurrent fide processes share the cores fairly, and does ``--jobs`` pay? Wall times of ``fide register``.

    .venv/bin/python benchmarks/concurrency.py [--pairs 12 --size 512] [--quick] [--wait-policy default|passive|active]

On a synthetic task (``fide synth --pairs P --size S --seed 3``, cached in ``--cache``), each row is a fresh
``python -m fide.cli.main register`` (default config, CPU, ``--force``) with the thread variables removed from its
environment, so fide's own default applies (the cores this process may use: affinity and cgroup quota):

1. **one after the other**: shard 0/2 alone, then shard 1/2 alone (P/2 pairs each);
2. **two at once**: both shards started together; ratio = (2) / (1), target <= 1.2 (the cores are shared, nothing
   is lost to oversubscription);
3. **default single process** on all P pairs, and **--jobs 2** on all P pairs; speed-up = single / jobs, target
   >= 1.3 on 2 cores.

Each time includes interpreter start-up and imports (what a user waits for). ``--wait-policy`` sets
``OMP_WAIT_POLICY`` in the children's environment (``default`` leaves fide's own choice). Prints a Markdown table.
Other work on the machine distorts the figures: run it on a quiet machine (or under ``flock``) and say so.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("concurrency")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's fide, not an installed one
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")


def _task(cache: Path, pairs: int, size: int) -> Path:
    folder = cache / f"concurrency-{pairs}x{size}"
    descriptor = folder / "SYNTHSHGBF_dataset.json"
    if not descriptor.is_file():
        from fide.synth import make_task

        descriptor = make_task(folder, pairs, size, seed=3)
    return descriptor


def _environment(wait_policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARIABLES}
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy.upper()
    return env


def _command(descriptor: Path, output: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "fide.cli.main", "register", str(descriptor), "-o", str(output), "--force", *extra]


def _run_together(commands: list[list[str]], env: dict[str, str]) -> float:
    """Start all ``commands`` at once; wall seconds until the last ends (each must exit 0)."""
    start = time.perf_counter()
    children = [
        subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    for command, child in zip(commands, children):
        _, err = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {child.returncode}: {err.decode()[-2000:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12, help="pairs of the synthetic task (even)")
    parser.add_argument("--size", type=int, default=512, help="side of the synthetic images, px")
    parser.add_argument("--quick", action="store_true", help="4 pairs of 256 px: a smoke run, not the figures")
    parser.add_argument("--wait-policy", choices=["default", "passive", "active"], default="default")
    parser.add_argument("--cache", type=Path, default=REPO / "benchmarks" / ".cache")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / ".cache" / "concurrency-out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.pairs, args.size = 4, 256
    descriptor = _task(args.cache, args.pairs, args.size)
    env = _environment(args.wait_policy)
    shards = [_command(descriptor, args.out / f"shard{i}", ["--shard", f"{i}/2"]) for i in range(2)]
    times = {}
    logger.info("one after the other (shard 0/2, then 1/2)")
    times["sequential"] = sum(_run_together([c], env) for c in shards)
    logger.info("two at once")
    times["together"] = _run_together(shards, env)
    logger.info("single process, all pairs")
    times["single"] = _run_together([_command(descriptor, args.out / "single", [])], env)
    logger.info("--jobs 2, all pairs")
    times["jobs2"] = _run_together([_command(descriptor, args.out / "jobs2", ["--jobs", "2"])], env)
    cores = len(os.sched_getaffinity(0))
    half = args.pairs // 2
    policy = "fide's default (GOMP_SPINCOUNT=1000)" if args.wait_policy == "default" else args.wait_policy.upper()
    print(f"\n{args.pairs} pairs of {args.size} px, {cores} cores, OMP_WAIT_POLICY {policy}\n")
    print("| run | wall s | figure |")
    print("|---|---|---|")
    print(f"| 2 shards of {half} pairs, one after the other | {times['sequential']:.1f} | |")
    ratio = times["together"] / times["sequential"]
    print(f"| 2 shards of {half} pairs, at once | {times['together']:.1f} | ratio {ratio:.2f} (target <= 1.2) |")
    print(f"| 1 process, {args.pairs} pairs (default threads) | {times['single']:.1f} | |")
    speedup = times["single"] / times["jobs2"]
    print(f"| --jobs 2, {args.pairs} pairs | {times['jobs2']:.1f} | speed-up {speedup:.2f}x (target >= 1.3) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
