"""Check a container run: one valid challenge field per pair in OUTPUT, nothing else that looks like a field.

    python test/container/check_output.py DATASET_JSON OUTPUT [--split val|test]

The pairs are those the entrypoint registers by default (the descriptor's "test" pairs when it lists any, otherwise
its "val" pairs). A field is valid when it reads as the official evaluator reads it (nibabel), has shape
(H, W, 1, 2) with (H, W) the fixed image's, and holds finite float values. When the run wrote ``results.csv``, no
pair may be marked "failed" there (the entrypoint writes an identity field for a failed pair and still exits 0).
Exits 0 when all hold, 1 otherwise, naming each problem.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from fide.io import load_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--split", choices=["val", "test"], default=None)
    args = parser.parse_args(argv)

    dataset = load_dataset(args.dataset)
    pairs = dataset.split(args.split or dataset.default_split())
    problems: list[str] = []
    if not pairs:
        problems.append(f"{args.dataset}: no pairs to check")
    expected = {pair.disp_name: pair for pair in pairs}
    found = {p.name for p in args.output.glob("disp_*.nii.gz")}
    problems += [f"missing field {name}" for name in sorted(set(expected) - found)]
    problems += [f"unexpected field {name}" for name in sorted(found - set(expected))]
    problems += [f"left-over partial file {p.name}" for p in args.output.glob(".*.part*")]
    for name in sorted(set(expected) & found):
        fixed_shape = nib.load(str(expected[name].fixed)).shape[:2]
        try:
            field = np.asarray(nib.load(str(args.output / name)).get_fdata(dtype=np.float32))
        except Exception as err:  # any read failure is a finding
            problems.append(f"{name}: unreadable ({err})")
            continue
        if field.shape != (*fixed_shape, 1, 2):
            problems.append(f"{name}: shape {field.shape}, expected {(*fixed_shape, 1, 2)}")
        elif not np.isfinite(field).all():
            problems.append(f"{name}: NaN or infinite values")
        else:
            mag = np.linalg.norm(field[:, :, 0, :], axis=-1)
            print(f"ok {name}: shape {field.shape}, |u| mean {mag.mean():.2f} px, max {mag.max():.2f} px")
    results = args.output / "results.csv"
    if results.is_file():
        with results.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            print("results.csv:", row.get("pair"), row.get("status"), f"{row.get('seconds')} s", row.get("message", ""))
        problems += [f"results.csv marks a pair failed: {row}" for row in rows if row.get("status") == "failed"]
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if not problems:
        print(f"{len(expected)} field(s) valid in {args.output}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
