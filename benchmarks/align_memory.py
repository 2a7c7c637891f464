"""Peak memory and time of ``fide align`` on a large synthetic pair (the issue's 20 000 x 20 000 RGB benchmark).

Writes a synthetic SHG / bright-field pair (``fide.synth.make_pair`` at 512 px, enlarged band by band to S x S by
``fide.synth.enlarged.write_enlarged``: BigTIFF, zlib tiles, a pyramid, OME pixel size) without holding either image
in memory, then runs ``fide align`` in a fresh process per size and reads that process's peak resident set size
from ``os.wait4`` (includes torch's native allocations). Prints a table::

    python benchmarks/align_memory.py --sizes 4000 20000 [--workdir /tmp/fide-align-bench] [--inverse]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fide.synth import make_pair
from fide.synth.enlarged import write_enlarged

_PIXEL_UM = 0.5
_PICTURE_PX = 512  # rendered side; enlarged to S x S (fide.synth.enlarged: no detail finer than S / 512 px)


def write_pair(folder: Path, size: int, seed: int = 0) -> tuple[Path, Path]:
    """``shg.ome.tif`` (grey) and ``bf.ome.tif`` (RGB), both size x size at 0.5 µm, tiled and pyramidal, written
    band by band (:func:`fide.synth.enlarged.write_enlarged`, bilinear), so neither is ever held whole."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = make_pair("val", 0, _PICTURE_PX, seed)
    pictures = {"shg.ome.tif": pair["fixed"][0].T, "bf.ome.tif": np.transpose(pair["moving"], (2, 1, 0))}
    paths = []
    for name, picture in pictures.items():
        path = folder / name
        if not path.is_file():
            write_enlarged(path, np.ascontiguousarray(picture), size / _PICTURE_PX, _PIXEL_UM)
        paths.append(path)
    return paths[0], paths[1]


def measure(fixed: Path, moving: Path, out: Path, inverse: bool) -> tuple[float, float, int]:
    """Run ``fide align`` in a child process: (peak RSS MiB, wall seconds, exit status)."""
    command = [sys.executable, "-m", "fide.cli.main", "align", str(fixed), str(moving), "-o", str(out)]
    command += ["--inverse"] if inverse else []
    start = time.perf_counter()
    child = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    _, status, usage = os.wait4(child.pid, 0)
    return usage.ru_maxrss / 1024, time.perf_counter() - start, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000], help="image sides S (S x S, both images)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fide-align-bench"))
    parser.add_argument("--inverse", action="store_true", help="also write fixed_warped (doubles the resampling)")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        folder = args.workdir / str(size)
        fixed, moving = write_pair(folder, size)
        peak, seconds, code = measure(fixed, moving, folder / "out", args.inverse)
        warped = folder / "out" / "moving_warped.ome.tif"
        rows.append((size, moving.stat().st_size / 2**20, peak, seconds, code, warped.is_file()))
    print("| S x S (fixed grey, moving RGB) | moving file MiB | peak RSS MiB | wall s | exit | moving_warped written |")
    print("|---|---|---|---|---|---|")
    for size, mib, peak, seconds, code, written in rows:
        print(f"| {size} x {size} | {mib:.0f} | {peak:.0f} | {seconds:.0f} | {code} | {written} |")


if __name__ == "__main__":
    main()
