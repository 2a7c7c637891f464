"""Example figures of ``fide synth`` for docs/synth.md, and its appearance statistics against the real-data spec.

Usage::

    .venv/bin/python benchmarks/make_synth_figures.py              # writes docs/img/synth_shg.png, synth_bf.png
    .venv/bin/python benchmarks/make_synth_figures.py --stats 20   # also prints the spec statistics of 20 cores

The figures show three aligned 834 px cores (training-pair stream of seed 1), downsized to 300 px each. The SHG panel
is displayed with a gain (the raw SHG is dim: median 2, p99 ~100), so the faint fibres are visible on screen.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from fide.synth import make_pair
from fide.synth.stats import SPEC_MEDIANS, appearance_stats

logger = logging.getLogger("make_synth_figures")


def _thumb(image: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) uint8 -> (size, size, C) uint8, anti-aliased."""
    tensor = torch.from_numpy(image.astype(np.float32))[None]
    small = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return small.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def make_figures(out_dir: Path, seed: int = 1, cases: tuple[int, ...] = (0, 1, 2), thumb: int = 300) -> list[Path]:
    shg_tiles, bf_tiles = [], []
    for index in cases:
        pair = make_pair("train", index, 834, seed)
        shg = pair["fixed"].astype(np.float32)
        shg_tiles.append(_thumb(np.clip(255 * (shg / 120) ** 0.7, 0, 255), thumb)[..., 0])  # display gain
        bf_tiles.append(_thumb(pair["moving"], thumb))
    gap = 4
    shg_row = np.concatenate([np.pad(t, ((0, 0), (0, gap)), constant_values=255) for t in shg_tiles], 1)[:, :-gap]
    bf_row = np.concatenate([np.pad(t, ((0, 0), (0, gap), (0, 0)), constant_values=255) for t in bf_tiles], 1)
    bf_row = bf_row[:, :-gap]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "synth_shg.png", out_dir / "synth_bf.png"]
    Image.fromarray(shg_row, "L").save(paths[0], optimize=True)
    # a 256-colour palette keeps the textured RGB panel small on disk
    Image.fromarray(bf_row, "RGB").quantize(256, dither=Image.Dither.NONE).save(paths[1], optimize=True)
    return paths


def stats_table(count: int, seed: int = 1, size: int = 834) -> pd.DataFrame:
    """Spec statistics of ``count`` aligned cores (training stream), one row per core."""
    rows = []
    for index in range(count):
        pair = make_pair("train", index, size, seed)
        rows.append(appearance_stats(pair["fixed"], pair["moving"]))
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> str:
    lines = [f"{'statistic':28s} {'synthetic median [min, max]':38s} spec median"]
    for key, spec in SPEC_MEDIANS.items():
        values = np.array(table[key].tolist(), dtype=float)
        med, lo, hi = np.median(values, 0), values.min(0), values.max(0)
        fmt = (lambda v: f"({', '.join(f'{x:.0f}' for x in v)})") if values.ndim > 1 else (lambda v: f"{v:.3g}")
        lines.append(f"{key:28s} {fmt(med):14s} [{fmt(lo)}, {fmt(hi)}]".ljust(67) + f" {spec}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stats", type=int, default=0, help="also print spec statistics of this many cores")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in make_figures(args.out, args.seed):
        logger.info("%s: %.0f KB", path, path.stat().st_size / 1024)
    if args.stats:
        logger.info("%s", summarise(stats_table(args.stats, args.seed)))


if __name__ == "__main__":
    main()
