"""Training data of the encoders: aligned SHG / bright-field pairs at the encoders' working size.

Pairs come from a Learn2Reg descriptor's ``training_paired_images`` (aligned, one grid). Each pair is read once,
min-max normalised, resized so the fixed image's longest side is ``size_px`` (the scale the encoders are applied at,
see :func:`fide.features.encoders.encode`) and kept in memory with its two sampling masks; every access draws a
fresh augmentation and crop from a generator seeded by (seed, epoch, index), so a resumed run sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset as TorchDataset

from fide import geometry
from fide.config import PreprocessConfig, TrainConfig
from fide.features.encoders import minmax_normalise, working_shape
from fide.io import DatasetError, Pair, read_image, read_landmark_pair
from fide.preprocess import bf_tissue, shg_foreground

from .augment import augment_pair

__all__ = ["LoadedPair", "load_training_pair", "PairedTrainingSet", "ValidationPair", "load_validation_pairs"]


@dataclass
class LoadedPair:
    """One aligned pair at the working size.

    Attributes:
        fixed: (1, 1, h, w) SHG in [0, 1] (min-max, not yet log-mapped: the encoders take the log).
        moving: (1, 3, h, w) bright-field RGB in [0, 1].
        fixed_mask: (1, 1, h, w) float {0, 1} SHG foreground (code: SHG >= 1), sampling set 2.
        moving_mask: (1, 1, h, w) float {0, 1} bright-field tissue, sampling set 1.
        name: the pair's case key, for messages.
    """

    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_mask: torch.Tensor
    moving_mask: torch.Tensor
    name: str


def _as_rgb(image: torch.Tensor, path: object, channels: int) -> torch.Tensor:
    if image.shape[0] != channels:
        raise DatasetError(f"{path}: expected {channels} channel(s) for this role, got {image.shape[0]}")
    return image[None]


def _downsample_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # area fraction > 1/4: thin SHG fibres survive the resize as mask pixels
    return (geometry.downsample(mask.float(), shape) > 0.25).float()


def load_training_pair(pair: Pair, size_px: int, preprocess: PreprocessConfig | None = None) -> LoadedPair:
    """Read an aligned pair, build its masks on the raw images and resize everything to the working size.

    Raises:
        DatasetError: unreadable files, wrong channel counts, or fixed and moving on different grids.
    """
    preprocess = preprocess or PreprocessConfig()
    fixed_raw = _as_rgb(read_image(pair.fixed), pair.fixed, 1)
    moving_raw = _as_rgb(read_image(pair.moving), pair.moving, 3)
    if fixed_raw.shape[-2:] != moving_raw.shape[-2:]:
        raise DatasetError(
            f"{pair.moving}: training pairs must be aligned on one grid, got {tuple(moving_raw.shape[-2:])} vs "
            f"fixed {tuple(fixed_raw.shape[-2:])}"
        )
    factor = min(1.0, size_px / max(fixed_raw.shape[-2:]))
    shape = working_shape(fixed_raw.shape[-2:], factor)
    fixed = geometry.downsample(minmax_normalise(fixed_raw), shape) if factor < 1 else minmax_normalise(fixed_raw)
    moving = geometry.downsample(minmax_normalise(moving_raw), shape) if factor < 1 else minmax_normalise(moving_raw)
    fixed_mask = _downsample_mask(shg_foreground(fixed_raw, preprocess.shg_threshold), shape)
    moving_mask = _downsample_mask(bf_tissue(moving_raw), shape)
    return LoadedPair(fixed.clamp(0, 1), moving.clamp(0, 1), fixed_mask, moving_mask, pair.name)


class PairedTrainingSet(TorchDataset):
    """Augmented, cropped training samples; one item = one pair.

    Args:
        pairs: loaded pairs (:func:`load_training_pair`).
        cfg: augmentation, crop size and seed.
        augment: False gives the plain pair (centre crop), e.g. for held-out losses.

    Items are dicts of ``fixed`` (1, c, c), ``moving`` (3, c, c), ``fixed_mask`` and ``moving_mask`` (1, c, c),
    c = min(``cfg.crop_px``, h, w); a DataLoader adds the batch axis.
    """

    def __init__(self, pairs: list[LoadedPair], cfg: TrainConfig, augment: bool = True) -> None:
        if not pairs:
            raise ValueError("pairs must not be empty: no training pairs to learn from")
        if cfg.crop_px < cfg.patch_px:
            raise ValueError(f"crop_px must be >= patch_px ({cfg.patch_px}), got {cfg.crop_px}")
        self.pairs = pairs
        self.cfg = cfg
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the items use (reproducible, resumable)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pair = self.pairs[index]
        seed = ((self.cfg.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63
        generator = torch.Generator().manual_seed(seed)
        tensors = (pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask)
        if self.augment:
            tensors = augment_pair(*tensors, self.cfg, generator)
        height, width = tensors[0].shape[-2:]
        crop_h, crop_w = min(self.cfg.crop_px, height), min(self.cfg.crop_px, width)
        if self.augment:
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
        else:
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
        names = ("fixed", "moving", "fixed_mask", "moving_mask")
        return {k: t[0, :, top : top + crop_h, left : left + crop_w] for k, t in zip(names, tensors)}


@dataclass
class ValidationPair:
    """A registration pair with landmarks: raw images and corresponding points (full resolution, array order).

    Attributes:
        fixed: (1, H, W) raw SHG.
        moving: (3, Hm, Wm) raw bright-field RGB.
        fixed_points: (N, 2) float64 fixed landmarks, pixels.
        moving_points: (N, 2) float64 moving landmarks, pixels.
        name: the pair's case key.
    """

    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_points: torch.Tensor
    moving_points: torch.Tensor
    name: str


def load_validation_pairs(pairs: list[Pair], limit: int = 0) -> list[ValidationPair]:
    """Read the pairs whose landmark CSVs exist (``landmarks`` folder rule); at most ``limit`` when > 0."""
    loaded = []
    for pair in pairs:
        fixed_csv, moving_csv = pair.landmarks("landmarks")
        if not (fixed_csv.is_file() and moving_csv.is_file()):
            continue
        fixed_points, moving_points = read_landmark_pair(fixed_csv, moving_csv)
        loaded.append(
            ValidationPair(
                read_image(pair.fixed),
                read_image(pair.moving),
                torch.from_numpy(fixed_points),
                torch.from_numpy(moving_points),
                pair.name,
            )
        )
        if 0 < limit <= len(loaded):
            break
    return loaded
