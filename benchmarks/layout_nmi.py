"""How much the coarse layout says at the truth: plain NMI of log-SHG against the grey bright field per pair.

    .venv/bin/python benchmarks/layout_nmi.py decoupled-patch20 --pairs 20 --seed 62 [--size 834]

The statistic the held-out real failing cores were described with (issue 25): NMI − 1 of log(1 + SHG) against the
mean of the bright field's RGB, 32 equal-width bins, over the whole fixed image with the moving image resampled
through the pair's true field; real cores score 0.008-0.022 at the truth and ~0.001 at wrong poses. Prints one
line per pair (the development tasks' case numbering: val pair k is case k + 1) and the range and median.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fide
from fide import geometry  # noqa: E402
from fide.synth.task import make_pair  # noqa: E402

BINS = 32  # as the real figures were measured


def layout_nmi(fixed: np.ndarray, grey: np.ndarray) -> float:
    """NMI − 1 = (H(a) + H(b)) / H(a, b) − 1 of two equally shaped arrays, ``BINS`` bins each."""
    joint, _, _ = np.histogram2d(fixed.ravel(), grey.ravel(), bins=BINS)
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(1)) + entropy(p.sum(0))) / entropy(p) - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("regime")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--size", type=int, default=834)
    args = parser.parse_args(argv)
    values = []
    for index in range(args.pairs):
        pair = make_pair("val", index, args.size, args.seed, regime=args.regime)
        fixed = np.log1p(pair["fixed"][0].astype(np.float32))
        grey = torch.from_numpy(pair["moving"].astype(np.float32).mean(0))[None, None]
        field = torch.from_numpy(pair["disp"]).float()[None]
        warped = geometry.warp(grey, field, padding_mode="border")[0, 0].numpy()
        values.append(layout_nmi(fixed, warped))
        faint = pair["tissue"].params.get("faint", False)
        print(f"case {index + 1:04d}: layout NMI {values[-1]:.4f}{'  (faint)' if faint else ''}", flush=True)
    print(f"{args.regime} seed {args.seed}: {min(values):.4f}-{max(values):.4f}, median {np.median(values):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
