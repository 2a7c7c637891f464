"""Learned modality encoders: two MONAI BasicUNets mapping SHG and bright-field images to a shared representation.

The paper (arXiv 2410.20812, stage 1) trains two non-shared FC-DenseNets with B-NCE so that the SHG map and the
bright-field map of an aligned pair look alike; the maps then feed keypoint matching and LNCC. fide uses a small
MONAI ``BasicUNet`` per modality instead (instance norm keeps the per-image intensity invariance, and it runs in
~0.3 s per 256^2 image on one CPU core).

Input normalisation, identical in training and at test time (the spec's §9 fix of the original code):

* each image is min-max normalised to [0, 1] (per channel), see :func:`minmax_normalise`;
* the SHG image is then mapped to ``log(1 + y)`` (inside :class:`ModalityEncoders`);
* the encoders see the images at a fixed scale: the fixed image's longest side is ``size_px`` (stored in the
  checkpoint), the moving image resized by the same factor.

Output normalisation (§2, optional): both maps are mapped to their common range, see :func:`common_range`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import BasicUNet

from fide import geometry

__all__ = [
    "DEFAULT_WEIGHTS",
    "ModalityEncoders",
    "minmax_normalise",
    "common_range",
    "working_shape",
    "encode",
    "save_checkpoint",
    "load_checkpoint",
    "load_encoders",
    "default_weights_available",
    "learned_features",
]

logger = logging.getLogger(__name__)

# the shipped weights, next to the package in the repository (no download, ever)
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "fide_encoders.pt"

# BasicUNet pools four times: padded sizes are multiples of 2^4
_DIVISOR = 16
_CHECKPOINT_FORMAT = 1

# the architecture of a new network (fide train); a checkpoint stores its own, which is what the pipeline loads
OUT_CHANNELS = 1  # paper: 1 channel
# fide: MONAI BasicUNet widths (5 encoder levels + the last decoder level); ~0.17 M parameters per network,
# ~0.3 s per 256^2 image on one CPU core (the paper's Tiramisu is ~10x slower)
UNET_FEATURES = (16, 16, 32, 32, 64, 16)
WORKING_SIZE_PX = 256  # fide: longest side of the fixed image the encoders see, = the pipeline's working size


def _unet(in_channels: int, out_channels: int, features: Sequence[int]) -> BasicUNet:
    return BasicUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(int(f) for f in features),
        act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm=("instance", {"affine": True}),
        dropout=0.0,
        upsample="deconv",
    )


class ModalityEncoders(nn.Module):
    """The pair of non-shared encoders: ``shg`` (1 input channel) and ``bf`` (3 input channels, RGB).

    Args:
        out_channels: D, channels of the shared representation (the paper uses 1).
        features: BasicUNet widths, six integers (five encoder levels, last decoder level).
        size_px: longest side of the fixed image at which the encoders were trained and must be applied.

    Raises:
        ValueError: ``out_channels`` < 1, ``features`` not six positive integers, or ``size_px`` < 16.

    Examples::

        >>> encoders = ModalityEncoders(out_channels=1, features=(8, 8, 8, 8, 8, 8))
        >>> fixed_map, moving_map = encoders(torch.rand(1, 1, 32, 32), torch.rand(1, 3, 32, 32))
        >>> tuple(fixed_map.shape), tuple(moving_map.shape)
        ((1, 1, 32, 32), (1, 1, 32, 32))
    """

    def __init__(
        self,
        out_channels: int = OUT_CHANNELS,
        features: Sequence[int] = UNET_FEATURES,
        size_px: int = WORKING_SIZE_PX,
    ) -> None:
        super().__init__()
        if int(out_channels) < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        features = tuple(int(f) for f in features)
        if len(features) != 6 or min(features) < 1:
            raise ValueError(f"features must be six positive integers (BasicUNet widths), got {features}")
        if int(size_px) < _DIVISOR:
            raise ValueError(f"size_px must be >= {_DIVISOR}, got {size_px}")
        self.out_channels = int(out_channels)
        self.features = features
        self.size_px = int(size_px)
        self.shg = _unet(1, self.out_channels, features)
        self.bf = _unet(3, self.out_channels, features)

    @property
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments, as stored in checkpoints."""
        return {"out_channels": self.out_channels, "features": list(self.features), "size_px": self.size_px}

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode min-max normalised images (the log of SHG is taken here).

        Args:
            fixed: (B, 1, H, W) SHG in [0, 1] (see :func:`minmax_normalise`).
            moving: (B, 3, Hm, Wm) bright-field RGB in [0, 1].

        Returns:
            (B, D, H, W) and (B, D, Hm, Wm) representation maps, unbounded. Any size works: inputs are padded to
            multiples of 16, at least 32 (reflection), and the maps cropped back.
        """
        if fixed.ndim != 4 or fixed.shape[1] != 1:
            raise ValueError(f"fixed must be (B, 1, H, W) SHG, got {tuple(fixed.shape)}")
        if moving.ndim != 4 or moving.shape[1] != 3:
            raise ValueError(f"moving must be (B, 3, H, W) RGB, got {tuple(moving.shape)}")
        return _padded(self.shg, torch.log1p(fixed)), _padded(self.bf, moving)


def _padded(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Run ``net`` on ``image`` padded to multiples of 16 (at least 32), and crop its output back to the input grid."""
    height, width = image.shape[-2:]
    # multiples of 16, and at least 32 so the coarsest level keeps 2x2 pixels for its instance norm
    pad_h = max(2 * _DIVISOR, height + (-height) % _DIVISOR) - height
    pad_w = max(2 * _DIVISOR, width + (-width) % _DIVISOR) - width
    if pad_h == 0 and pad_w == 0:
        return net(image)
    top, left = pad_h // 2, pad_w // 2
    # reflection needs pad < size; replicate covers the tiny images reflection cannot
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    padded = F.pad(image, (left, pad_w - left, top, pad_h - top), mode=mode)
    return net(padded)[..., top : top + height, left : left + width]


def minmax_normalise(image: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel min-max normalisation (the code's pre-processing).

    Args:
        image: (B, C, H, W) raw intensities, any units.

    Returns:
        (B, C, H, W) in [0, 1]; a constant channel becomes all zeros.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got {tuple(image.shape)}")
    lo = image.amin(dim=(2, 3), keepdim=True)
    hi = image.amax(dim=(2, 3), keepdim=True)
    return (image - lo) / (hi - lo).clamp(min=1e-8)


def common_range(
    fixed_map: torch.Tensor, moving_map: torch.Tensor, low: float = 1.0, high: float = 99.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map both representation maps to their common range (the code's §2 normalisation), per sample and channel.

    ``lo`` = the larger of the two ``low`` percentiles, ``hi`` = the smaller of the two ``high`` percentiles;
    ``f <- clamp((f - lo) / (hi - lo), 0, 1)``.

    Args:
        fixed_map: (B, D, H, W).
        moving_map: (B, D, Hm, Wm).
        low: lower percentile, 0-100.
        high: upper percentile, 0-100.

    Returns:
        Both maps in [0, 1], same shapes.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    if fixed_map.shape[:2] != moving_map.shape[:2]:
        raise ValueError(
            f"maps must agree in (B, D), got fixed {tuple(fixed_map.shape)} and moving {tuple(moving_map.shape)}"
        )
    q = fixed_map.new_tensor([low / 100, high / 100])

    def percentiles(values: torch.Tensor) -> torch.Tensor:  # (B, D, N) -> (2, B, D)
        step = values.shape[-1] // 200_000 + 1  # quantile's cost; a strided subsample gives the same percentiles
        return torch.quantile(values[..., ::step].float(), q.float(), dim=-1).to(values)

    pf = percentiles(fixed_map.flatten(2))
    pm = percentiles(moving_map.flatten(2))
    lo = torch.maximum(pf[0], pm[0])[..., None, None]
    hi = torch.minimum(pf[1], pm[1])[..., None, None]
    scale = (hi - lo).clamp(min=1e-6)
    return ((fixed_map - lo) / scale).clamp(0, 1), ((moving_map - lo) / scale).clamp(0, 1)


def working_shape(shape: Sequence[int], factor: float) -> tuple[int, int]:
    """Grid of an image resized by ``factor`` (the pipeline's rule: rounded, at least 8 px)."""
    return tuple(max(8, round(int(n) * factor)) for n in shape)  # type: ignore[return-value]


def _resize(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    if shape[0] < image.shape[-2] or shape[1] < image.shape[-1]:
        return geometry.downsample(image, shape)  # anti-aliased, corner-aligned
    return geometry.resize_image(image, shape)


def encode(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    encoders: ModalityEncoders | None = None,
    *,
    normalise_output: bool = True,
    restore_size: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learned representation maps of a raw SHG / bright-field pair, with the training-time normalisation.

    Steps: per-image min-max to [0, 1]; resize both images by one factor so that the fixed image's longest side is
    ``encoders.size_px`` (never upsampled); SHG -> log(1 + y); the two networks; optionally the common range; the
    maps resampled back to the input grids.

    Args:
        fixed: (B, 1, H, W) raw SHG intensities (uint8 range, but any units work).
        moving: (B, 3, Hm, Wm) raw bright-field RGB.
        encoders: trained encoders; the shipped weights (:data:`DEFAULT_WEIGHTS`) when None.
        normalise_output: map both maps to their common [p1, p99] range, clamped to [0, 1] (§2).
        restore_size: resample the maps to (H, W) and (Hm, Wm); when False, return them at the working grids
            (:func:`working_shape` of each input with the common factor), where the encoders computed them.

    Returns:
        fixed_map (B, D, H, W) and moving_map (B, D, Hm, Wm) (or working-grid shapes), in [0, 1] when
        ``normalise_output``, else unbounded. No gradient.

    Raises:
        ValueError: wrong channel counts or dimensions, or batch sizes that differ.
    """
    if fixed.ndim != 4 or fixed.shape[1] != 1:
        raise ValueError(f"fixed must be (B, 1, H, W) raw SHG, got {tuple(fixed.shape)}")
    if moving.ndim != 4 or moving.shape[1] != 3:
        raise ValueError(f"moving must be (B, 3, Hm, Wm) raw RGB, got {tuple(moving.shape)}")
    if fixed.shape[0] != moving.shape[0]:
        raise ValueError(f"fixed and moving batch sizes differ: {fixed.shape[0]} vs {moving.shape[0]}")
    if encoders is None:
        encoders = load_encoders(DEFAULT_WEIGHTS, device=fixed.device)
    param = next(encoders.parameters())
    factor = min(1.0, encoders.size_px / max(fixed.shape[-2:]))
    fixed_shape = working_shape(fixed.shape[-2:], factor)
    moving_shape = working_shape(moving.shape[-2:], factor)
    fixed_in = _resize(minmax_normalise(fixed.to(param)), fixed_shape)
    moving_in = _resize(minmax_normalise(moving.to(param)), moving_shape)
    was_training = encoders.training
    encoders.eval()
    try:
        with torch.no_grad():
            fixed_map, moving_map = encoders(fixed_in, moving_in)
    finally:
        encoders.train(was_training)
    if normalise_output:
        fixed_map, moving_map = common_range(fixed_map, moving_map)
    if restore_size:
        fixed_map = _resize(fixed_map, fixed.shape[-2:])
        moving_map = _resize(moving_map, moving.shape[-2:])
    return fixed_map.to(fixed.device), moving_map.to(moving.device)


def save_checkpoint(path: str | Path, encoders: ModalityEncoders, **extra: Any) -> Path:
    """Write the encoders (and any extra entries, e.g. optimiser state) to ``path`` atomically.

    The file holds ``{"format", "hparams", "state_dict", **extra}`` and loads with ``torch.load(weights_only=True)``
    as long as ``extra`` holds only tensors, numbers, strings, lists and dicts.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = encoders.module if hasattr(encoders, "module") else encoders  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {"format": _CHECKPOINT_FORMAT, "hparams": module.hparams, "state_dict": state, **extra}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (CPU tensors, ``weights_only``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a fide encoder checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors all mean "not our file"
        raise ValueError(f"{path}: not a readable fide encoder checkpoint ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT or "state_dict" not in payload:
        raise ValueError(f"{path}: not a fide encoder checkpoint (expected format {_CHECKPOINT_FORMAT})")
    return payload


def load_encoders(path: str | Path | None = None, device: torch.device | str | None = None) -> ModalityEncoders:
    """Build :class:`ModalityEncoders` from a checkpoint, in eval mode.

    Args:
        path: checkpoint file; :data:`DEFAULT_WEIGHTS` when None or "".
        device: where to put the networks (CPU when None).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a fide encoder checkpoint or its weights do not fit its hyper-parameters.
    """
    path = Path(path) if path else DEFAULT_WEIGHTS
    payload = load_checkpoint(path)
    encoders = ModalityEncoders(**payload["hparams"])
    try:
        encoders.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match hyper-parameters {payload['hparams']} ({err})") from None
    return encoders.to(device or "cpu").eval()


def default_weights_available() -> bool:
    """Whether the shipped weights are present (then the pipeline's ``--features auto`` means learned)."""
    return DEFAULT_WEIGHTS.is_file()


def learned_features(
    fixed: torch.Tensor, moving: torch.Tensor, encoders: ModalityEncoders | None = None
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A pipeline feature extractor (``fide.pipeline.FeatureFn``) serving the learned maps of one raw pair.

    The pipeline calls its extractor with the working-size intensity channels; the learned encoders need the raw
    images instead, so the maps are computed here once (:func:`encode`, common range, at the encoders' working
    grid) and the returned function only resamples them to the grids it is asked for.

    Args:
        fixed: (1, H, W) or (1, 1, H, W) raw SHG.
        moving: (3, Hm, Wm) or (1, 3, Hm, Wm) raw bright-field RGB.
        encoders: trained encoders; the shipped weights when None.

    Returns:
        ``features(fixed_intensity (1, 1, h, w), moving_intensity (1, 1, hm, wm))`` ->
        ``(fixed_map (1, D, h, w), moving_map (1, D, hm, wm))`` in [0, 1].
    """
    fixed = fixed[None] if fixed.ndim == 3 else fixed
    moving = moving[None] if moving.ndim == 3 else moving
    fixed_map, moving_map = encode(fixed, moving, encoders, restore_size=False)

    def features(fixed_intensity: torch.Tensor, moving_intensity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            _resize(fixed_map, fixed_intensity.shape[-2:]).to(fixed_intensity),
            _resize(moving_map, moving_intensity.shape[-2:]).to(moving_intensity),
        )

    return features
