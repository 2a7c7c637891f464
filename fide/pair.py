"""One registration pair as every stage sees it, and the evidence measured on pose hypotheses.

:class:`PairInputs` holds the prepared images, the label maps (of the images smoothed to the tissue layout), the
feature extractor with its maps at each working size, and the fibre texture; :func:`measure_evidence` scores poses
on all of it for :mod:`fide.decision`.

Two label map pairs: the optimiser's (``num_labels``, soft histograms at every working size) and the decision's, finer
(:data:`EVIDENCE_LABELS`, full resolution only): the NMI the poses are chosen and trusted by, and the quality score.
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
from fide.optimise.instance import counted_label_nmis, label_nmi
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
    """One pair's full-resolution inputs, shared by every stage: prepared images, label maps (the optimiser's and the
    decision's), the feature extractor (its maps at any working size, built once) and the fibre texture."""

    fixed: PreparedImage
    moving: PreparedImage
    fixed_labels: torch.Tensor  # (1, 1, H, W) int
    moving_labels: torch.Tensor  # (1, 1, Hm, Wm) int
    evidence_labels: tuple[torch.Tensor, torch.Tensor]  # (1, 1, H, W) int, (1, 1, Hm, Wm) float: EVIDENCE_LABELS
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
        """Full-resolution NMI of the optimiser's label maps under an affine (what each precision step must raise)."""
        disp = geometry.affine_to_disp(affine[None].to(self.fixed_labels.device, torch.float32), self.fixed.shape)
        loss = LabelNMILoss(self.num_labels)
        return float(label_nmi(loss, self.fixed_labels.float(), self.moving_labels.float(), disp)[0])

    def evidence_nmi(self, disp: torch.Tensor) -> float:
        """The decision's criterion: NMI of the :data:`EVIDENCE_LABELS` label maps at full resolution under a (1, 2, H,
        W) field, inside the overlap, in [0, 1]."""
        return counted_label_nmis(*self.evidence_labels, disp, EVIDENCE_LABELS)[0]

    def evidence_nmis(self, affines: torch.Tensor) -> list[float]:
        """:meth:`evidence_nmi` of (B, 3, 3) affines."""
        to_field = lambda a: geometry.affine_to_disp(a[None].to(self.evidence_labels[1]), self.fixed.shape)  # noqa: E731
        return [self.evidence_nmi(to_field(affine)) for affine in affines]


# label maps are made of the images smoothed to the scale of the tissue layout (pixels at 834 px): where SHG fibres
# do not match the bright field's, labels of the fibres put the NMI optimum 3-5 px off the truth (decoupled
# development pairs: 3.1-4.4 px -> 0.7-1.7 px on four of them with 2 px; 4 px was no better)
_LABEL_SMOOTH_PX = 2.0


# the decision's label maps are finer than the optimiser's 8 (whose soft histograms cost grows with the square): at
# the former bar 0.0105, 1 of the 192 development decisions that chose the right pose had a margin under it instead
# of 4, and with the truth removed from the hypotheses 4 far poses a margin above it instead of 6 (the bar is now
# where 6 pass: ConfidenceConfig.margin_mid); 6 px smoothing or a sum of two scales separated worse (HISTORY part 16)
EVIDENCE_LABELS = 16


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
    layouts = [_layout(image.colour) for image in (fixed, moving)]
    fixed_labels, moving_labels = (
        kmeans_labels(layout, opt.num_labels, iterations=KMEANS_ITERATIONS, seed=cfg.seed) for layout in layouts
    )
    fixed_evidence, moving_evidence = (
        kmeans_labels(layout, EVIDENCE_LABELS, iterations=KMEANS_ITERATIONS, seed=cfg.seed) for layout in layouts
    )
    # learned maps are the most distinctive correlation criterion where present (synthetic validation: the true
    # pose ranks first far more often than with eosin vs log-SHG), and then the only one: log-SHG vs eosin beside
    # them changed one of 160 development pairs (1.44 -> 1.07 px without it) for a quarter of the search's time
    if features is None and encoders is not None:
        search_maps = [feature_fn(fixed.intensity, moving.intensity)]
    else:
        search_maps = [(fixed.intensity, moving.intensity)]
    inputs = PairInputs(
        fixed,
        moving,
        fixed_labels,
        moving_labels,
        (fixed_evidence, moving_evidence.float()),
        feature_fn,
        opt.num_labels,
        cfg.fibres,
    )
    return inputs, search_maps


def measure_evidence(
    inputs: PairInputs, affines: list[torch.Tensor], source: str, cfg: FideConfig
) -> list[PoseEvidence]:
    """Every criterion measured on each pose: the decision's full-resolution label NMI, and the texture where it can
    judge."""
    if not affines:
        return []
    stacked = torch.stack(affines)
    nmis = inputs.evidence_nmis(stacked)
    texture = inputs.texture()
    if texture is None:
        return [PoseEvidence(a, q, source=source) for a, q in zip(affines, nmis)]
    scores, contrasts = (v.tolist() for v in texture.scores_and_contrasts(stacked, cfg.confidence.texture_shift_px))
    return [PoseEvidence(a, q, c, t, source) for a, q, c, t in zip(affines, nmis, contrasts, scores)]
