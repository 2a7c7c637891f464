"""Landmark CSVs: no header, one point a row, array-axis order, 2 or 3 columns (an all-zero third is dropped)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import DatasetError
from .fields import atomic_path

__all__ = ["read_landmarks", "read_landmark_pair", "write_landmarks"]


def read_landmarks(path: str | Path) -> np.ndarray:
    """Read (N, 2) float64 points, pixels, array order; raises DatasetError naming the file on bad content."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: landmark file not found")
    try:
        points = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise DatasetError(f"{path}: not a numeric CSV without header ({err})") from None
    if points.shape[1] == 3 and np.all(points[:, 2] == 0):
        points = points[:, :2]
    if points.shape[1] != 2:
        raise DatasetError(f"{path}: expected 2 columns (or 3 with z = 0), got {points.shape[1]}")
    if not np.isfinite(points).all():
        raise DatasetError(f"{path}: landmarks contain NaN or infinite values")
    return points


def read_landmark_pair(fixed_path: str | Path, moving_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read corresponding fixed and moving landmarks; row n of one matches row n of the other."""
    fixed, moving = read_landmarks(fixed_path), read_landmarks(moving_path)
    if len(fixed) != len(moving):
        raise DatasetError(f"{moving_path}: has {len(moving)} landmarks but {fixed_path} has {len(fixed)}")
    return fixed, moving


def write_landmarks(path: str | Path, points: np.ndarray) -> Path:
    """Write (N, 2) points as a header-less CSV, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        np.savetxt(tmp, np.asarray(points, dtype=np.float64), delimiter=",", fmt="%.4f")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
