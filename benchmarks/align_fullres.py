"""Full-resolution accuracy of ``fide align`` with and without the coarse-to-fine refinement (issue 26, item 1).

For each ``fide example-pair`` folder, ``fide align`` runs once per variant in its own process (wall seconds and
peak RSS of that process); the landmarks are mapped through the written ``transform.tfm`` with SimpleITK alone
(:func:`align_tre.pair_tre`'s route) and the error is given in full-resolution **fixed** pixels (the moving error
vector taken back through the inverse of the affine's linear part, ``transform.json``) and in **render** pixels:
``fide example-pair`` renders pairs above ``--render`` (default ``ENLARGE_ABOVE_PX``, 4096) at that size and
enlarges them, so they hold no detail finer than size / render fixed pixels (the fixed error divided by that; equal
up to the render side). Run (pairs made with another ``--render`` need the same ``--render`` here)::

    fide example-pair PAIR4096 --size 4096 && fide example-pair PAIR16384 --size 16384
    OMP_NUM_THREADS=1 python benchmarks/align_fullres.py PAIR4096 [PAIR16384 ...] --out OUT [--render 4096]

Variants: ``working`` (``--no-refine``, the working-size affine), ``refined`` (the default: refined affine),
``local`` (``--local``: refined affine and smooth local correction).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from fide.synth.enlarged import ENLARGE_ABOVE_PX

VARIANTS = {"working": ["--no-refine"], "refined": [], "local": ["--local"]}


def render_px(size: int, render: int) -> float:
    """Fixed pixels per pixel of the picture ``fide example-pair --render RENDER`` rendered the pair as (1 up to
    ``render``)."""
    return max(1.0, size / render)


def _frame(path: Path) -> sitk.Image:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    image = sitk.Image([1] * reader.GetDimension(), sitk.sitkUInt8)  # a geometry-only stand-in
    image.SetOrigin(reader.GetOrigin())
    image.SetSpacing(reader.GetSpacing())
    image.SetDirection(reader.GetDirection())
    return image


def fixed_pixel_errors(out: Path, pair: Path) -> np.ndarray:
    """Per-landmark error of ``out/transform.tfm``, full-resolution fixed pixels."""
    transform = sitk.ReadTransform(str(out / "transform.tfm"))
    fixed, moving = _frame(pair / "shg.ome.tif"), _frame(pair / "bright field.ome.tif")
    linear = np.asarray(json.loads((out / "transform.json").read_text())["pixel"]["matrix"])[:2, :2]
    table = pd.read_csv(pair / "landmarks.csv")
    errors = []
    for row in table.itertuples(index=False):
        index = (float(row.fixed_x), float(row.fixed_y)) + (0.0,) * (fixed.GetDimension() - 2)
        point = transform.TransformPoint(fixed.TransformContinuousIndexToPhysicalPoint(index))
        mapped = np.asarray(moving.TransformPhysicalPointToContinuousIndex(point)[:2])
        errors.append(np.linalg.norm(np.linalg.solve(linear, mapped - [row.moving_x, row.moving_y])))
    return np.asarray(errors)


def run_align(pair: Path, out: Path, options: list[str]) -> tuple[float, float]:
    """``fide align`` in a child process: (wall seconds, peak RSS GB)."""
    command = [sys.executable, "-c", "from fide.cli.main import main; main()", "align"]
    command += [str(pair / "shg.ome.tif"), str(pair / "bright field.ome.tif"), "-o", str(out), *options]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"fide align {pair} {options} failed: {child.stderr.read().decode()[-400:]}")
    return seconds, usage.ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", type=Path, nargs="+", help="fide example-pair folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for the fide align outputs")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--render", type=int, default=ENLARGE_ABOVE_PX, help="the pairs' fide example-pair --render")
    args = parser.parse_args()
    print(
        "| size px | variant | mean err fixed px | max err fixed px | mean / max err render px | seconds | peak RSS GB "
        "| refinement |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for pair in args.pairs:
        for variant in args.variants:
            out = args.out / f"{pair.name}-{variant}"
            seconds, peak = run_align(pair, out, VARIANTS[variant])
            errors = fixed_pixel_errors(out, pair)
            description = json.loads((out / "transform.json").read_text())
            size = max(description["pixel"]["fixed_size_xy"])
            refinement = description.get("refinement") or {}
            note = refinement.get("reason", "off")
            render = errors / render_px(size, args.render)
            print(
                f"| {size} | {variant} | {errors.mean():.2f} | {errors.max():.2f} | {render.mean():.2f} / "
                f"{render.max():.2f} | {seconds:.0f} | {peak:.2f} | {note} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
