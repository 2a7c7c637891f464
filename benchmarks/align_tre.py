"""Score ``fide align`` outputs through ``transform.tfm`` alone, as another tool would use it (SimpleITK only).

For each pair: fixed landmarks (pixels, x = column, y = row) → physical point of the fixed file as
``SimpleITK.ReadImage`` gives it → ``transform.tfm`` → continuous index of the moving file; TRE against the
moving landmarks, in moving pixels. The held-out check of issue 14 runs::

    fide align --pairs pairs.csv -o OUT                                   # batch, one folder per pair
    python benchmarks/align_tre.py pairs.csv OUT                          # scores OUT/<name>/transform.tfm
    fide align FIXED MOVING -o OUT1 && python benchmarks/align_tre.py one.csv OUT1 --flat   # one pair

``pairs.csv`` has columns ``fixed,moving,name,landmarks``; ``landmarks`` names a CSV with columns
``fixed_x,fixed_y,moving_x,moving_y`` (what ``fide example-pair`` writes). Relative paths are relative to the CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk


def pair_tre(folder: Path, fixed: Path, moving: Path, landmarks: Path) -> np.ndarray:
    """Per-landmark error (moving pixels) of ``folder/transform.tfm``."""
    transform = sitk.ReadTransform(str(folder / "transform.tfm"))
    reader = {}
    for key, path in (("fixed", fixed), ("moving", moving)):
        info = sitk.ImageFileReader()
        info.SetFileName(str(path))
        info.ReadImageInformation()
        reader[key] = sitk.Image([1] * info.GetDimension(), sitk.sitkUInt8)  # a geometry-only stand-in
        reader[key].SetOrigin(info.GetOrigin())
        reader[key].SetSpacing(info.GetSpacing())
        reader[key].SetDirection(info.GetDirection())
    table = pd.read_csv(landmarks)
    dim = reader["fixed"].GetDimension()
    errors = []
    for row in table.itertuples(index=False):
        index = (float(row.fixed_x), float(row.fixed_y)) + (0.0,) * (dim - 2)
        point = transform.TransformPoint(reader["fixed"].TransformContinuousIndexToPhysicalPoint(index))
        mapped = reader["moving"].TransformPhysicalPointToContinuousIndex(point)[:2]
        errors.append(np.hypot(mapped[0] - row.moving_x, mapped[1] - row.moving_y))
    return np.asarray(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", type=Path, help="CSV: fixed,moving,name,landmarks")
    parser.add_argument("out", type=Path, help="fide align output folder")
    parser.add_argument("--flat", action="store_true", help="OUT is one pair's folder (fide align FIXED MOVING)")
    parser.add_argument("--threshold", type=float, default=2.0, help="pixels counted as registered")
    args = parser.parse_args()
    table = pd.read_csv(args.pairs, dtype=str, keep_default_na=False)
    base = args.pairs.parent
    rows = []
    for row in table.itertuples(index=False):
        name = row.name if "name" in table.columns and row.name else Path(row.moving).name.split(".")[0]
        folder = args.out if args.flat else args.out / name
        try:
            tre = pair_tre(folder, base / row.fixed, base / row.moving, base / row.landmarks)
            rows.append((name, float(tre.mean()), float(tre.max()), ""))
        except (OSError, RuntimeError, ValueError) as err:
            rows.append((name, float("nan"), float("nan"), str(err).strip().splitlines()[-1][:120]))
    print("| pair | mean TRE px | max TRE px | note |\n|---|---|---|---|")
    for name, mean, worst, note in rows:
        print(f"| {name} | {mean:.2f} | {worst:.2f} | {note} |")
    means = np.array([r[1] for r in rows])
    print(f"\n{int((means < args.threshold).sum())}/{len(rows)} pairs under {args.threshold} px (mean TRE)")


if __name__ == "__main__":
    main()
