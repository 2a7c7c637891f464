"""One registration pair as every stage sees it, and the evidence measured on pose hypotheses.

:class:`PairInputs` holds the prepared images, the label maps (of the images smoothed to the tissue layout), the
feature extractor with its maps at each working size, and the fibre texture; :func:`measure_evidence` scores poses
on all of it for :mod:`fide.decision`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fide import geometry
from fide.config import REFERENCE_SIDE_PX, FibreConfig, FideConfig
from fide.decision import PoseEvidence
from fide.features import ModalityEncoders, kmeans_labels, learned_features, mind_ssc
from fide.features.labels import KMEANS_ITERATIONS
from fide.features.mind import MIND_DILATION, MIND_RADIUS
from fide.optimise.instance import label_nmi
from fide.optimise.losses import LabelNMILoss
from fide.prealign.fibres import FibreTexture
from fide.preprocess import PreparedImage, prepare_pair
from fide.preprocess.filters import layout_blur
from fide.preprocess.working import WorkingPair, make_working_pair

__all__ = ["FeatureFn", "PairInputs", "handcrafted_features", "measure_evidence", "prepare_inputs"]

logger = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def handcrafted_features(fixed: torch.Tensor, moving: torch.Tensor, radius: int = 1, dilation: int = 2):
    """MIND-SSC of both modality-robust intensity channels: (1, 1, h, w) each → (1, 6, h, w) each."""
    return mind_ssc(fixed, radius, dilation), mind_ssc(moving, radius, dilation)


@dataclass
class PairInputs:
    """One pair's full-resolution inputs, shared by every stage: prepared images, label maps, the feature extractor
    (its maps at any working size, built once) and the fibre texture."""

    fixed: PreparedImage
    moving: PreparedImage
    fixed_labels: torch.Tensor  # (1, 1, H, W) int
    moving_labels: torch.Tensor  # (1, 1, Hm, Wm) int
    features: FeatureFn
    num_labels: int
    fibres: FibreConfig
    _working: dict[int, WorkingPair] = field(default_factory=dict, repr=False)
    _texture: FibreTexture | None = field(default=None, repr=False)

    @property
    def shg_and_he(self) -> bool:
        """Whether the pair is SHG (one channel) against H&E (RGB), the pairs the fibre texture can judge."""
        return self.fixed.raw.shape[1] == 1 and self.moving.raw.shape[1] == 3

    def texture(self) -> FibreTexture | None:
        """The full-resolution fibre texture (built once), or None where it cannot judge the pair."""
        if not (self.fibres.enabled and self.shg_and_he):
            return None
        if self._texture is None:
            self._texture = FibreTexture(self.fixed.intensity, self.moving.intensity)
        return self._texture if self._texture.has_patches else None

    def working(self, size_px: int) -> WorkingPair:
        """The pair at ``size_px``, built once (pre-alignment and optimisation share the 256 px one)."""
        if size_px not in self._working:
            self._working[size_px] = make_working_pair(
                self.fixed, self.moving, self.fixed_labels, self.moving_labels, size_px, self.features
            )
        return self._working[size_px]

    def quality(self, affine: torch.Tensor) -> float:
        """Full-resolution NMI of the label maps under an affine (the selection criterion and the quality score)."""
        return self.qualities(affine[None])[0]

    def qualities(self, affines: torch.Tensor) -> list[float]:
        """:meth:`quality` of (B, 3, 3) affines, in batches of at most :data:`_QUALITY_BATCH_PIXELS` fixed pixels."""
        per_batch = max(1, _QUALITY_BATCH_PIXELS // (self.fixed.shape[0] * self.fixed.shape[1]))
        loss = LabelNMILoss(self.num_labels)
        out: list[float] = []
        for chunk in affines.split(per_batch):
            disp = geometry.affine_to_disp(chunk.to(self.fixed_labels.device, torch.float32), self.fixed.shape)
            out += label_nmi(loss, self.fixed_labels.float(), self.moving_labels.float(), disp).tolist()
        return out

    def quality_of_field(self, disp: torch.Tensor) -> float:
        loss = LabelNMILoss(self.num_labels)
        return float(label_nmi(loss, self.fixed_labels.float(), self.moving_labels.float(), disp)[0])


# the joint histogram's scatter-adds leave the CPU caches above ~2^19 values: at 834 px one affine took 15 ms, each
# of a batch of 8 took 78 ms (1 thread); per-affine values are the same either way
_QUALITY_BATCH_PIXELS = 1 << 19


# label maps are made of the images smoothed to the scale of the tissue layout (pixels at 834 px): where SHG fibres
# do not match the bright field's, labels of the fibres put the NMI optimum 3-5 px off the truth (decoupled
# development pairs: 3.1-4.4 px -> 0.7-1.7 px on four of them with 2 px; 4 px was no better)
_LABEL_SMOOTH_PX = 2.0


def _layout(image: torch.Tensor) -> torch.Tensor:
    return layout_blur(image, _LABEL_SMOOTH_PX * max(image.shape[-2:]) / REFERENCE_SIDE_PX)


def prepare_inputs(
    fixed_image: torch.Tensor,
    moving_image: torch.Tensor,
    cfg: FideConfig,
    features: FeatureFn | None,
    encoders: ModalityEncoders | None,
) -> tuple[PairInputs, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Preprocessing, label maps and the feature extractor; the comparable channel pairs the search correlates."""
    if features is None and encoders is not None and fixed_image.shape[0] != 1:
        # the encoders are trained for SHG (1 channel) -> bright field; other modality pairs use MIND-SSC
        if cfg.encoder.features == "learned":
            raise ValueError(
                f"learned encoders need a 1-channel SHG fixed image, got {fixed_image.shape[0]} channels "
                "(use handcrafted features)"
            )
        logger.info(
            "fixed image has %d channels: handcrafted features instead of the SHG encoders", fixed_image.shape[0]
        )
        encoders = None
    fixed, moving = prepare_pair(fixed_image, moving_image, cfg.preprocess)
    if features is not None:
        feature_fn = features
    elif encoders is not None:
        feature_fn = learned_features(fixed.raw, moving.raw, encoders)  # raw with corner fill already replaced
    else:
        feature_fn = lambda f, m: handcrafted_features(f, m, MIND_RADIUS, MIND_DILATION)  # noqa: E731
    opt = cfg.optimise
    fixed_labels, moving_labels = (
        kmeans_labels(_layout(image.colour), opt.num_labels, iterations=KMEANS_ITERATIONS, seed=cfg.seed)
        for image in (fixed, moving)
    )
    # learned maps are the most distinctive correlation criterion where present (synthetic validation: the true
    # pose ranks first far more often than with eosin vs log-SHG), and then the only one: log-SHG vs eosin beside
    # them changed one of 160 development pairs (1.44 -> 1.07 px without it) for a quarter of the search's time
    if features is None and encoders is not None:
        search_maps = [feature_fn(fixed.intensity, moving.intensity)]
    else:
        search_maps = [(fixed.intensity, moving.intensity)]
    inputs = PairInputs(fixed, moving, fixed_labels, moving_labels, feature_fn, opt.num_labels, cfg.fibres)
    return inputs, search_maps


def measure_evidence(
    inputs: PairInputs, affines: list[torch.Tensor], source: str, cfg: FideConfig
) -> list[PoseEvidence]:
    """Every criterion measured on each pose: full-resolution label NMI, and the texture where it can judge."""
    if not affines:
        return []
    stacked = torch.stack(affines)
    nmis = inputs.qualities(stacked)
    texture = inputs.texture()
    if texture is None:
        return [PoseEvidence(a, q, source=source) for a, q in zip(affines, nmis)]
    scores, contrasts = (v.tolist() for v in texture.scores_and_contrasts(stacked, cfg.confidence.texture_shift_px))
    return [PoseEvidence(a, q, c, t, source) for a, q, c, t in zip(affines, nmis, contrasts, scores)]
