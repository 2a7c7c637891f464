"""Registering two images of any size and pixel size: :func:`register` and its :class:`Registration`.

Both images are reduced to a common working pixel size (so the scale between them is known, not searched for),
``fide.pipeline.register_pair`` registers them there, and the result is carried back to each image's own full
resolution pixel grid. Conventions: see :mod:`fide.align.source` (arrays (row, column[, channel]), points (x, y)).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fide import geometry
from fide.config import REFERENCE_SIDE_PX, FideConfig, config_from_dict
from fide.features import ModalityEncoders
from fide.pipeline import RegistrationResult, register_pair
from fide.reproducibility import seed_everything
from fide.warp_points import invert_points

from .aligned import Aligned
from .refine import refine
from .resample import PixelMap
from .source import ImageSource, WorkingImage, open_source, working_image

__all__ = ["Registration", "PixelMap", "register", "register_sources", "working_shapes", "WORKING_PX"]

logger = logging.getLogger(__name__)

WORKING_PX = REFERENCE_SIDE_PX  # fixed image's longest side during registration: the challenge's 834 px, where
# every hyper-parameter was calibrated
_FIELD_FLAT_PX = 1e-3  # a residual field below this everywhere is the affine itself


@dataclass
class Registration(Aligned):
    """The result of :func:`register`: fixed (x, y) pixels map to moving (x, y) pixels, full resolution.

    Points, GeoJSON and images cross it with :class:`~fide.align.aligned.Aligned`'s methods: ``warp_points``
    (fixed → moving), ``transform_points`` / ``transform_geojson`` (moving → fixed), ``warp`` and ``write_image``
    (moving grid → fixed grid); each takes ``inverse=True`` for the other way.

    Attributes:
        fixed, moving: the two inputs (metadata; pixels of arrays).
        affine: (3, 3) float64 fixed-to-moving affine, full-resolution pixels, (x, y) = (column, row) order:
            ``[x_m, y_m, 1] = affine @ [x_f, y_f, 1]``.
        quality: full-resolution NMI of the label maps at working resolution, [0, 1], higher is better.
        confidence: how likely the pose is right, [0, 1] (NaN where the engine does not estimate it).
        mirrored: whether the affine reflects (det < 0).
        deformable: whether a deformable residual is part of the map (``disp`` differs from the affine's).
        flagged: the confidence is below ``confidence.flag_below``: the pose is likely wrong (``flag_reason`` says
            why; check the QC picture).
        notes: what a user should know, one line each.
        seconds: wall time of the registration.
        working: the fixed and moving images at working resolution (QC) and the working-resolution field.
        confidence_basis, scores: what the confidence was read from (see :class:`fide.pipeline.RegistrationResult`).
        flag_reason: one line on why the result is flagged (None when it is not).
        refinement: what the full-resolution refinement did (:mod:`fide.align.refine`: kept, reason, levels), or
            None where it did not run; with a local correction ``forward`` is ``A (p + u(p))``.
    """

    fixed: ImageSource
    moving: ImageSource
    affine: np.ndarray
    quality: float
    confidence: float
    mirrored: bool
    deformable: bool
    flagged: bool
    notes: list[str]
    seconds: float
    working_fixed: WorkingImage
    working_moving: WorkingImage
    working_disp: torch.Tensor  # (1, 2, h, w) working pixels, fixed to moving
    forward: PixelMap = dataclasses.field(repr=False, default=None)  # type: ignore[assignment]
    _backward: PixelMap | None = dataclasses.field(repr=False, default=None)
    confidence_basis: str = "none"
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    flag_reason: str | None = None
    refinement: dict | None = None

    def __post_init__(self) -> None:
        if self.forward is None:
            if self.deformable:
                post = torch.linalg.inv(self.working_moving.to_working)
                self.forward = PixelMap(self.working_fixed.to_working, self.working_disp, post)
            else:
                self.forward = PixelMap(torch.as_tensor(self.affine, dtype=torch.float64))

    @property
    def backward(self) -> PixelMap:
        """Moving full-resolution pixels to fixed ones, for resampling (the inverse field is solved once on the
        moving working grid and interpolated bilinearly; :meth:`warp_points` solves each point exactly instead)."""
        if self._backward is None:
            if self.deformable and self.forward.field is not None and self.refinement and self.refinement["kept"]:
                self._backward = self.forward.inverse(self.moving.shape)  # the refined local correction
            elif not self.deformable:
                self._backward = PixelMap(torch.linalg.inv(torch.as_tensor(self.affine, dtype=torch.float64)))
            else:
                shape = tuple(self.working_moving.pixels.shape[1:])
                grid = geometry.identity_grid(shape, like=torch.zeros((), dtype=torch.float64))
                points = grid.reshape(2, -1).T
                inverse = invert_points(points, self.working_disp.to(torch.float64))
                field_ = (inverse - points).T.reshape(1, 2, *shape)
                post = torch.linalg.inv(self.working_fixed.to_working)
                self._backward = PixelMap(self.working_moving.to_working, field_, post)
        return self._backward

    def save(
        self, folder: str | Path, *, inverse: bool = False, qc: bool = True, compression: str = "zlib"
    ) -> dict[str, Path]:
        """Write ``transform.tfm``, ``transform.json``, ``disp.nii.gz``, ``moving_warped.<ext>`` (and with
        ``inverse`` ``fixed_warped.<ext>``) and ``qc.png`` into ``folder``; see :func:`fide.align.export.save`.
        ``compression``: "zlib", "jpeg" (8-bit images) or "none", for the warped OME-TIFFs."""
        from .export import save  # the writers (SimpleITK, TIFF, matplotlib) only when saving

        return save(self, Path(folder), inverse=inverse, qc=qc, compression=compression)

    def summary(self) -> str:
        """One line: status, quality, confidence, seconds."""
        status = f"flagged ({self.flag_reason})" if self.flagged else "ok"
        confidence = f"{self.confidence:.2f}" if self.confidence == self.confidence else "n/a"
        return f"{status}: quality {self.quality:.3f}, confidence {confidence}, {self.seconds:.1f} s" + (
            f" ({'; '.join(self.notes)})" if self.notes else ""
        )


def working_shapes(
    fixed: ImageSource, moving: ImageSource, working_px: int
) -> tuple[tuple[int, int], tuple[int, int], list[str]]:
    """Working (X, Y) sizes of both images at one common pixel size, and notes on assumed pixel sizes.

    The working pixel size puts the fixed image's longest side at ``working_px`` (never finer than the fixed
    image's own pixels). Without pixel sizes both images are taken to share one.
    """
    notes = []
    size_f, size_m = fixed.pixel_size_um, moving.pixel_size_um
    if size_f is None or size_m is None:
        if size_f is not None or size_m is not None:
            known = "fixed" if size_f is not None else "moving"
            notes.append(f"only the {known} pixel size is known: the other image is assumed to share it")
        size_f = size_m = size_f or size_m or (1.0, 1.0)
    extent = max(n * s for n, s in zip(fixed.shape, size_f))
    pixel = max(extent / working_px, min(size_f))
    shape_f = tuple(max(8, round(n * s / pixel)) for n, s in zip(fixed.shape, size_f))
    shape_m = tuple(max(8, round(n * s / pixel)) for n, s in zip(moving.shape, size_m))
    return shape_f, shape_m, notes  # type: ignore[return-value]


def register_sources(
    fixed: ImageSource,
    moving: ImageSource,
    cfg: FideConfig,
    *,
    working_px: int = WORKING_PX,
    device: torch.device | str | None = None,
    encoders: ModalityEncoders | None = None,
) -> Registration:
    """Register two opened sources (see :func:`register`)."""
    start = time.perf_counter()
    shape_f, shape_m, notes = working_shapes(fixed, moving, working_px)
    work_f, work_m = working_image(fixed, shape_f), working_image(moving, shape_m)
    logger.info("%s -> %s: registering at %s / %s px (x, y)", fixed.name, moving.name, shape_f, shape_m)
    result: RegistrationResult = register_pair(work_f.pixels, work_m.pixels, cfg, device=device, encoders=encoders)
    affine_w = result.affine.detach().cpu().to(torch.float64)
    affine = torch.linalg.inv(work_m.to_working) @ affine_w @ work_f.to_working
    disp = result.disp.detach().cpu().float()
    residual = disp - geometry.affine_to_disp(affine_w[None].float(), disp.shape[2:])
    deformable = bool(residual.abs().max() > _FIELD_FLAT_PX)
    quality = float(result.quality)
    reason = result.flag_reason
    forward, refinement = None, None
    if cfg.refine.enabled and deformable:
        notes.append("not refined at full resolution: the working-size deformable residual is kept")
    elif cfg.refine.enabled:
        refined = refine(fixed, moving, affine.numpy(), work_f.pixels, work_f.to_working, seed=cfg.seed)
        local = cfg.refine.local and refined.field is not None
        refinement = {"kept": refined.kept, "local": bool(local and refined.kept), "reason": refined.reason}
        refinement["levels"] = refined.levels
        logger.info("%s: %s", fixed.name, refined.reason)
        if not refined.kept and refined.levels:  # it ran and found the matches disagreeing
            notes.append(f"working-size affine kept, {refined.reason}")
        if refined.kept:
            affine = torch.from_numpy(refined.affine)
            forward, deformable = refined.pixel_map(local), bool(local)
    return Registration(
        fixed,
        moving,
        affine.numpy(),
        quality,
        float(result.confidence),
        bool(torch.linalg.det(affine[:2, :2]) < 0),
        deformable,
        reason is not None,
        notes + list(result.notes),
        time.perf_counter() - start,
        work_f,
        work_m,
        disp,
        forward=forward,
        confidence_basis=result.confidence_basis,
        scores=dict(result.scores),
        flag_reason=reason,
        refinement=refinement,
    )


def register(
    fixed: str | Path | np.ndarray,
    moving: str | Path | np.ndarray,
    cfg: FideConfig | dict | None = None,
    *,
    fixed_pixel_size: float | tuple[float, float] | None = None,
    moving_pixel_size: float | tuple[float, float] | None = None,
    working_px: int = WORKING_PX,
    device: torch.device | str | None = None,
    encoders: ModalityEncoders | None | str = "auto",
    seed: int | None = None,
) -> Registration:
    """Register a moving image (e.g. bright field) to a fixed one (e.g. SHG): the notebook entry point.

    Args:
        fixed: image file or numpy array (rows, columns[, channels]); grey, RGB or RGBA, any bit depth.
        moving: the same for the moving image; its size and pixel size may differ.
        cfg: a :class:`fide.config.FideConfig` or a dict of its tree (e.g. ``{"deformable": {"enabled": True}}``).
        fixed_pixel_size: µm per pixel (one value or (x, y)); overrides the file's metadata.
        moving_pixel_size: the same for the moving image.
        working_px: longest side of the fixed image during registration.
        device: "cpu", "cuda" or None (CPU).
        encoders: "auto" loads the configured learned encoders (``cfg.encoder``), None uses handcrafted features.
        seed: overrides ``cfg.seed``; every random choice follows it.

    Returns:
        A :class:`Registration`; ``fide align`` writes ``.save(OUT)`` of the same result.

    Examples::

        >>> import fide
        >>> reg = fide.register("shg.ome.tif", "bright_field.ome.tif")   # doctest: +SKIP
        >>> reg.warp_points([[100.0, 50.0]])                              # doctest: +SKIP
        >>> reg.transform_points([[200.0, 100.0]])   # moving -> fixed      # doctest: +SKIP
    """
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    cfg = cfg or FideConfig()
    if seed is not None:
        cfg.seed = seed
    seed_everything(cfg.seed)
    if isinstance(encoders, str):
        from fide.features.select import resolve_encoders

        encoders = resolve_encoders(cfg.encoder, torch.device(device) if device else None)
    sources = open_source(fixed, fixed_pixel_size, "fixed"), open_source(moving, moving_pixel_size, "moving")
    return register_sources(*sources, cfg, working_px=working_px, device=device, encoders=encoders)
