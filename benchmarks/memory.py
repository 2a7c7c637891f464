"""Peak memory (max RSS) and wall time of registering one pair at large image sizes, one fresh process per size.

    .venv/bin/python benchmarks/memory.py --sizes 0 1024 2048 4096 [--stages deformable] [--deformable] [--threads 2]

For each size S a synthetic 512^2 pair (``fide.synth.make_pair``, val pair 0) is upsampled to S x S (bilinear,
``fide.geometry.resize_image``) and written as challenge NIfTIs (uint8) to a temporary folder. A child process then
does what ``fide register`` does for one pair: read both images, resolve the encoders (``--features``), run
``fide.pipeline.register_pair`` on the CPU and write the full-size field. The parent reads the child's peak resident
set size from ``resource.getrusage(RUSAGE_CHILDREN)`` (Linux: KiB), which covers torch's native allocations that
``tracemalloc`` misses. The baseline row (``--sizes 0``) is the interpreter with torch and fide imported.

Prints a Markdown table (size, peak RSS, RSS above baseline, seconds, stage seconds) for docs/operations.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("memory")


def _child(fixed_path: str, moving_path: str, out_path: str, stages: str, features: str, deformable: bool) -> None:
    """Register one pair as ``fide register`` would and print the stage timings as JSON."""
    from fide.config import FideConfig
    from fide.features.select import resolve_encoders
    from fide.io import read_image, write_disp
    from fide.pipeline import register_pair

    if not fixed_path:  # baseline: imports only
        print(json.dumps({"seconds": 0.0, "stages": {}}))
        return
    start = time.perf_counter()
    cfg = FideConfig(stages=stages)
    cfg.encoder.features = features
    cfg.deformable.enabled = cfg.deformable.enabled or deformable
    fixed, moving = read_image(fixed_path), read_image(moving_path)
    result = register_pair(fixed, moving, cfg, encoders=resolve_encoders(cfg.encoder))
    write_disp(out_path, result.disp[0])
    print(json.dumps({"seconds": time.perf_counter() - start, "stages": result.seconds}))


def _write_pair(size: int, folder: Path, seed: int) -> tuple[Path, Path]:
    import numpy as np
    import torch

    from fide import geometry
    from fide.synth import make_pair, write_image

    pair = make_pair("val", 0, 512, seed)
    paths = []
    for role, image in (("0000", pair["fixed"]), ("0001", pair["moving"])):
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
        big = geometry.resize_image(tensor, (size, size))[0].round().clamp(0, 255).to(torch.uint8).numpy()
        paths.append(write_image(folder / f"MEM_{size:04d}_{role}.nii.gz", big))
    return paths[0], paths[1]


def _measure(size: int, folder: Path, args: argparse.Namespace) -> dict:
    fixed, moving = _write_pair(size, folder, args.seed) if size else ("", "")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--child", str(fixed), str(moving), str(folder / f"disp_{size}.nii.gz")]
    command += ["--stages", args.stages, "--features", args.features] + (["--deformable"] if args.deformable else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"size {size}: child failed\n{done.stderr[-2000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before and size:  # RUSAGE_CHILDREN keeps the largest child so far: sizes must grow
        logger.warning("size %d: peak not above the previous child's; run sizes in increasing order", size)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for path in folder.glob(f"*{size:04d}_*.nii.gz"):
        path.unlink()
    return {"size": size, "peak_mib": peak_kib / 1024, **report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1024, 2048, 4096], help="0 = baseline")
    parser.add_argument("--stages", default="deformable", help="last pipeline stage (as fide register --stages)")
    parser.add_argument("--features", default="auto", choices=["auto", "learned", "handcrafted"])
    parser.add_argument("--deformable", action="store_true", help="enable the deformable residual (off by default)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the child")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=3, metavar=("FIXED", "MOVING", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child, args.stages, args.features, args.deformable)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fide-memory-") as tmp:
        for size in sorted(args.sizes):
            rows.append(_measure(size, Path(tmp), args))
            logger.info("%s", rows[-1])
    baseline = next((r["peak_mib"] for r in rows if r["size"] == 0), 0.0)
    print("| image size | peak RSS (MiB) | above imports (MiB) | seconds | slowest stages (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in sorted(row["stages"].items(), key=lambda kv: -kv[1])[:3])
        name = "imports only" if row["size"] == 0 else f"{row['size']}²"
        above = row["peak_mib"] - baseline
        print(f"| {name} | {row['peak_mib']:.0f} | {above:.0f} | {row['seconds']:.0f} | {stages} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
