"""Every hyper-parameter of fide, in one dataclass tree; defaults are the paper's values where it has one.

Sources in comments: "code" = the FIDE team's validation code (Neon_ShgBf), "paper" = arXiv 2410.20812,
"globalign" = the organisers' baseline, "fide" = chosen here (the reason is given).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PreprocessConfig",
    "SearchConfig",
    "FibreConfig",
    "PrealignConfig",
    "OptimiseConfig",
    "DeformableConfig",
    "ConfidenceConfig",
    "EncoderConfig",
    "FideConfig",
    "TrainConfig",
    "STAGES",
    "config_from_dict",
    "REFERENCE_SIDE_PX",
    "MIRROR_CHOICES",
    "LABEL_SEARCH_CHOICES",
    "FIBRE_VOTES",
    "fibre_votes",
]

# pipeline prefixes selectable with --stages (each includes the ones before it)
STAGES = ("search", "prealign", "affine", "deformable")
# SearchConfig.mirror: both poses, unmirrored only, mirrored only
MIRROR_CHOICES = ("auto", "never", "always")
# SearchConfig.label_search: where the correlation criteria disagree and no fibre texture will judge the pose,
# where they disagree, or always
LABEL_SEARCH_CHOICES = ("auto", "disagree", "always")
# FibreConfig.votes: how the collagen patches' correlations can be combined into one vote on the fibre grid
FIBRE_VOTES = ("median", "mean")


def fibre_votes(votes: Sequence[str]) -> tuple[str, ...]:
    """``votes`` as a tuple, checked against :data:`FIBRE_VOTES` (a JSON config gives a list).

    Raises:
        ValueError: empty, or a vote that is not one of them.
    """
    if not votes or any(vote not in FIBRE_VOTES for vote in votes):
        raise ValueError(f"fibres.votes must be a non-empty list of {list(FIBRE_VOTES)}, got {list(votes)}")
    return tuple(votes)


# the challenge's image side; lengths given "at 834 px" (fibre widths, band-pass scales) scale by side / this
REFERENCE_SIDE_PX = 834


@dataclass
class PreprocessConfig:
    percentile_low: float = 1.0  # code: common range from the 1st/99th percentiles
    percentile_high: float = 99.0
    shg_threshold: float = 1.0  # code: SHG foreground = SHG >= 1 (uint8)
    shg_mask_sigma_px: float = 4.0  # fide: smooths the sparse fibre signal into a tissue footprint
    shg_footprint_threshold: float = 2.0  # appearance spec: "smoothed signal > 2" is the footprint
    bf_max_saturation: float = 50 / 255  # code: background = unsaturated and bright (HSV inRange 0..50, 132..255)
    bf_min_value: float = 132 / 255
    bf_fill_value: float = 40 / 255  # fide: unsaturated and this dark is black corner fill, not tissue
    min_side_px: int = 16  # fide: smaller images are refused before registration (fide.preprocess.signal)
    min_signal_fraction: float = 0.02  # fide: SHG footprint / BF tissue below this is "no signal" (real SHG >= 0.15)
    # fide: a bright-field pixel this many grey levels (0-255) off the image's median colour is structure, not
    # background noise; pale stains the H&E tissue mask misses (HISTOLM's) still count as tissue
    bf_structure_levels: float = 15.0


@dataclass
class SearchConfig:
    """Exhaustive global initialisation: rotation x scale x mirror, all translations at once (CMIF)."""

    size_px: int = 64  # fide: longest side of the fixed image during the search (CPU budget ~1-2 s)
    num_labels: int = 4  # fide: K of the k-means label maps at search level (K^2 FFT correlations per candidate)
    angle_step_deg: float = 6.0  # globalign: 100 angles over 360°; 60 here, refined below
    scale_min: float = 0.6  # appearance spec: scales 0.66-1.13 plus a further 0.9-1.1
    scale_max: float = 1.35
    scale_steps: int = 9
    # fide: "auto" also searches mirrored poses (a slide mounted face down); "never" / "always" when it is known
    mirror: str = "auto"
    # fide: rotations searched are limited to ±this (180 = any); a user who knows the range (the challenge: 20) says so
    max_rotation_deg: float = 180.0
    max_shift: float = 0.25  # fide: translations up to this fraction of the image side, from the tissue centroids
    min_overlap: float = 0.5  # globalign: at least 50 % overlap
    batch: int = 24  # candidates per FFT batch (memory ~ batch * K^2 * canvas^2 complex)
    top_k: int = 4  # distinct candidates handed on to refinement / restarts
    # fide: the label-MI criterion (the costliest: K^2 correlations per pose, ~1 s on 2 cores) runs "always", with
    # "disagree" only where the correlation criteria's best poses disagree, and with "auto" only there and where no
    # fibre texture judges the pose after the optimisation (SHG/H&E with collagen patches: the fibre fallback is
    # that pair's safety net). On 110 development pairs "auto" against "disagree": the same 109 under 2 px, mean
    # TRE within 0.08 px per regime, 0.9-2.2 s a patch pair less. Without learned features it always runs
    label_search: str = "auto"
    agree_px: float = 0.04  # "agree": the two best poses map every fixed corner within this fraction of its side
    refine_size_px: int = 128  # fide: second, finer level of the search around each candidate
    refine_angle_deg: float = 4.0  # +- range of the fine angle sweep
    refine_angle_steps: int = 9
    refine_scale_steps: int = 5
    refine_scale_ratio: float = 1.06  # +- ratio of the fine scale sweep
    refine_max_shift: float = 0.06  # translations of the fine sweep, fraction of the image side

    def __post_init__(self) -> None:
        if isinstance(self.mirror, bool):  # configs written before "auto" existed said true / false
            self.mirror = "auto" if self.mirror else "never"
        if self.mirror not in MIRROR_CHOICES:
            raise ValueError(f"search.mirror must be one of {list(MIRROR_CHOICES)}, got {self.mirror!r}")
        if self.label_search not in LABEL_SEARCH_CHOICES:
            raise ValueError(
                f"search.label_search must be one of {list(LABEL_SEARCH_CHOICES)}, got {self.label_search!r}"
            )
        if not 0 <= self.max_rotation_deg <= 180:
            raise ValueError(f"search.max_rotation_deg must be in [0, 180], got {self.max_rotation_deg}")


@dataclass
class FibreConfig:
    """Fallback search on the fibre texture of SHG collagen patches, for pairs whose quality score stays low.

    Lengths are pixels of an 834 px image (the challenge size), scaled with the image side.
    """

    enabled: bool = True
    size_px: int = 278  # fide: exhaustive grid at a third of 834 px: fibres survive as texture, an FFT ~1 ms
    band_px: tuple[float, float] = (2.0, 8.0)  # fide: band-pass Gaussian sigmas of the grid searches
    patch_smooth_px: float = 4.0  # smoothing before the SHG patches are thresholded
    patches: int = 3  # the largest patches vote on the grids
    patch_max_radius_px: float = 150.0  # wider patches are cut to this disk
    # fide: the three patches' consensus at the true pose falls by ~25 % 2° off and ~60 % 3° off (measured on dense
    # synthetic centre patches), where wrong poses then win: a 6° grid missed one whose true angle was 2.6° off
    angle_step_deg: float = 4.0
    # fide: the grid searches unmirrored poses at these scales first (same pixel size: the usual pair) and stops
    # when one is confirmed; mirrored poses at these scales, then the other scales, only if not
    likely_scales: tuple[float, float] = (0.9, 1.1)
    # fide: distinct poses of each grid shell and vote that are checked (each ~0.06 s, and ~0.5 s more for a pose the
    # patches confirm); on dense synthetic centre patches the true pose ranked 2nd or 3rd, a few hundredths of a
    # vote below a wrong one
    grid_candidates: int = 4
    scale_step: float = 0.06
    pool_px: int = 2  # tolerance of each vote, pixels at size_px, for the grid's pose error
    # fide: the grid's candidates come from each of these patch votes (FIBRE_VOTES), from one
    # set of correlations: on seven dense synthetic centre patches the true pose was among the 4 best distinct grid
    # poses of the median on 4, of the mean on 4, of either on 6
    votes: tuple[str, ...] = ("median", "mean")
    refine_size_px: int = 417  # per-patch location and first continuous fit
    locate_window_px: float = 24.0  # each patch looks this far from where the voted pose puts it
    ransac_threshold_px: float = 4.0
    ransac_iterations: int = 300
    min_inliers: int = 5  # fide: patches that must agree on one affine (three always fit one; 4 agreed by chance)
    refine_patches: int = 12  # patches located one by one and fitted
    final_band_px: tuple[float, float] = (1.0, 6.0)  # band of the last fit (full resolution) and texture score
    # fide: Levenberg-Marquardt steps of each continuous affine fit on the texture (it stops earlier once no step
    # raises the score); from grid poses 20 reached what 60 Adam steps had on recorded development fits
    refine_iterations: int = 20
    fit_damping: float = 1e-3  # initial Marquardt factor of those fits
    accept_ratio: float = 1.5  # fide: kept only if its texture score beats the current affine's by this factor
    # fide: ... and, where the current NMI is above optimise.quality_flag_below, if it lowers that NMI by at most
    # this fraction (measured: a wrong match 0.79x, a right rescue 0.94x)
    nmi_tolerance: float = 0.1
    # fide: ... unless its texture NCC reaches this: the NMI bar is then waived (a wrong match fitted to 0.21 in
    # the 512 px demo; right rescues on synthetic centre patches 0.28-0.47, one rejected at 0.31 with NMI 0.74x)
    texture_overrides_nmi: float = 0.3
    # fide: the search also runs when the selected pose's texture NCC is below this (a wrong pose scores ~0)
    verify_below: float = 0.2
    # fide: the last affine step, at full resolution on the texture of a trusted pose (the NMI passes end at 384 px),
    # kept only if the full-resolution NMI stays within the tolerance. On 70 development pairs 68 ended under 1 px
    # against 65 without it, mean 0.515 vs 0.560 px (exactly affine pairs 0.56 -> 0.42, the smooth-warped ones about
    # even), ~0.25 s a pair; Adam steps (see fibre_texture.polish_on_patches), 0 turns it off
    polish_iterations: int = 30
    polish_learning_rate: float = 0.05
    polish_nmi_tolerance: float = 0.01
    batch: int = 32

    def __post_init__(self) -> None:
        self.votes = fibre_votes(self.votes)


@dataclass
class PrealignConfig:
    """Keypoints + descriptors + mutual nearest neighbours + RANSAC affine, guided by the global search."""

    size_px: int = 256  # fide: working size of keypoint detection and description
    num_keypoints: int = 400
    nms_radius_px: int = 3  # code: 5x5 NMS
    search_radius_px: float = 12.0  # fide: matches must lie this close to the search's prediction
    ransac_iterations: int = 1000  # code: maxIters 1000
    ransac_threshold_px: float = 3.5  # code: 3.5 px at 832^2 (scaled to the working size)
    min_inliers: int = 12  # fide: fewer inliers -> keep the global search's transform
    seed: int = 0


@dataclass
class OptimiseConfig:
    """Instance optimisation with fidelity-imposed displacement editing."""

    levels: int = 3  # fide: pyramid levels above the working size (paper: 5 levels at 832^2)
    size_px: int = 256  # fide: finest working size of the affine optimisation on CPU
    lncc_iterations: int = 30  # code: 30 LNCC + 30 NMI
    nmi_iterations: int = 30
    lncc_kernel: int = 9  # code: windows 19, 13, 9, 5, 3 over levels 832..52; 9 at 256^2 covers the same tissue
    # fide: per-pixel field, working pixels (the paper's 1e-4 drives a CNN's weights); 5e-2 stalled ~2 px short of
    # the optimum from starts 7 px off on synthetic validation, 1e-1 converged
    learning_rate: float = 1e-1
    level_weights_base: float = 0.5  # code: w_l = 1, 1/2, 1/4, ...
    num_labels: int = 8  # code: k = 8 k-means labels
    kmeans_iterations: int = 20
    alpha: float = 1.0  # code: editing strength, 1 = project onto the fidelity affine at every level
    restarts: int = 3  # code: 3 restarts
    screen_size_px: int = 128  # fide: search candidates are screened by a short NMI polish at this size
    screen_iterations: int = 15
    # fide: a restart is only spent on a start whose screening NMI is at least this fraction of the best one (the
    # others are false basins: on synthetic validation the true pose screened >= 0.95 x best, false ones <= 0.75 x)
    restart_keep_ratio: float = 0.85
    # fide: a last NMI-only pass at this finer size (the paper optimises up to 832 px; 256 px alone left ~2x the
    # affine floor of TRE on synthetic validation); 0 disables it
    fine_size_px: int = 384
    fine_iterations: int = 30
    fine_learning_rate: float = 3e-2
    # fide: NMI below this means the label maps carry almost nothing (nearly empty SHG): a doubtful pair then gets
    # the exhaustive fibre grid. On whole-core development tasks every failed pair scored <= 0.014 and every
    # registered one >= 0.038; the flag in results.csv comes from the confidence (ConfidenceConfig) instead
    quality_flag_below: float = 0.025


@dataclass
class ConfidenceConfig:
    """Confidence of a result and the flag in results.csv (see fide/optimise/confidence.py)."""

    # fide: texture contrast (NCC at the pose minus its mean 8 px away) on synthetic development pairs: >= 0.35 at
    # every right pose, <= 0.03 at wrong ones, 0.11 at the one wrong pose the fibre fit had polished
    texture_mid: float = 0.15
    texture_width: float = 0.025
    texture_shift_px: float = 8.0  # pixels at 834 px: fibres (~2 px wide) have decorrelated there
    # fide: a strong NMI vouches for a pose whose texture peak is small but real (smooth SHG). Wrong poses had a
    # contrast <= 0.03 on the development pairs, but one wrong pose of a benchmark run searched at ±20° on ±180°
    # pairs reached contrast ~0.07 at NMI 0.054: both bars sit above that
    nmi_support_mid: float = 0.1
    nmi_support_width: float = 0.015
    texture_floor_mid: float = 0.09
    texture_floor_width: float = 0.012
    # fide: the former quality flag (NMI 0.025; failures <= 0.014, registered whole cores >= 0.038)
    nmi_mid: float = 0.025
    nmi_width: float = 0.005
    flag_below: float = 0.5  # confidence under this: flagged


@dataclass
class DeformableConfig:
    """Final regularised deformable residual (the paper's output is affine; this stage is fide's addition)."""

    # fide: off by default: on synthetic validation neither variant beat the affine result (see README, Ablations)
    enabled: bool = False
    similarity: str = "nmi"  # "nmi" (label maps, as the selection criterion) or "mse" (MIND, convexAdam)
    num_labels: int = 8
    size_px: int = 256
    grid_spacing_px: int = 8  # control grid spacing at the working size
    iterations: int = 60
    learning_rate: float = 0.05
    diffusion_weight: float = 1.0  # convexAdam: lambda 1.25 x diffusion; tuned on synthetic validation
    mind_radius: int = 1  # convexAdam: MIND-SSC radius 1, dilation 2
    mind_dilation: int = 2
    max_disp_px: float = 12.0  # fide: the residual is small by construction; larger moves are rejected


@dataclass
class EncoderConfig:
    """Learned modality encoders (B-NCE); used when weights are present and features == "learned"."""

    features: str = "auto"  # "auto" | "learned" | "handcrafted"
    weights: str = ""  # path to a .pt checkpoint; "" = the shipped default in weights/
    out_channels: int = 1  # paper: 1 channel
    # fide: MONAI BasicUNet widths (5 encoder levels + the last decoder level); ~0.17 M parameters per network,
    # ~0.3 s per 256^2 image on one CPU core (the paper's Tiramisu is ~10x slower)
    unet_features: tuple[int, ...] = (16, 16, 32, 32, 64, 16)
    # fide: longest side of the fixed image the encoders see (both images resized by one factor), = the pipeline's
    # working size; stored in the checkpoint, which wins over this value when weights are loaded
    size_px: int = 256
    common_range: bool = True  # code: outputs mapped to the common [p1, p99] range before matching and LNCC


@dataclass
class FideConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    fibres: FibreConfig = field(default_factory=FibreConfig)
    prealign: PrealignConfig = field(default_factory=PrealignConfig)
    optimise: OptimiseConfig = field(default_factory=OptimiseConfig)
    deformable: DeformableConfig = field(default_factory=DeformableConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    stages: str = "deformable"  # last stage to run, one of STAGES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stages not in STAGES:
            raise ValueError(f"stages must be one of {STAGES}, got {self.stages!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def runs(self, stage: str) -> bool:
        """Whether ``stage`` is part of the selected prefix of the pipeline."""
        return STAGES.index(stage) <= STAGES.index(self.stages)


def config_from_dict(values: dict[str, Any]) -> FideConfig:
    """Build a config from a (possibly partial) nested dict; unknown keys are an error, not ignored."""
    sections = {f.name: f for f in dataclasses.fields(FideConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in sections:
            raise ValueError(f"unknown config key {key!r}, expected one of {sorted(sections)}")
        section_type = sections[key].default_factory if isinstance(value, dict) else None  # type: ignore[misc]
        if section_type is not None and dataclasses.is_dataclass(section_type):
            known = {f.name for f in dataclasses.fields(section_type)}
            unknown = set(value) - known
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)} in config section {key!r}, expected {sorted(known)}")
            kwargs[key] = section_type(**value)
        else:
            kwargs[key] = value
    return FideConfig(**kwargs)


@dataclass
class TrainConfig:
    """Training of the learned encoders with B-NCE (``fide train``); sizes are at the encoders' working size."""

    epochs: int = 40
    max_steps: int = 0  # fide: stop after this many optimiser steps in total (0 = no cap)
    learning_rate: float = 4e-4  # code: Adam, lr 4e-4, amsgrad, no weight decay, no schedule
    weight_decay: float = 0.0
    amsgrad: bool = True
    grad_clip: float = 1.0  # code: gradient-norm clip 1.0
    crop_px: int = 256  # fide: random crop of the augmented working-size pair (the whole image at 256)
    num_patches: int = 64  # code: n = 64 patches per direction
    patch_px: int = 64  # fide: the code's 128 px at 832^2 is ~40 px at 256^2; 64 keeps 32^2 positions per patch
    pool_kernel: int = 3  # fide: the code's kernel 5 / stride 2 at 832^2, scaled to the working size
    pool_stride: int = 2
    critic: str = "l1"  # code: "l1" (tau 0.5); paper: "cosine"
    temperature: float = 0.5
    nce_weight: float = 0.1  # code: 0.1 x NCE(BF->SHG) + 0.1 x NCE(SHG->BF)
    flip_prob: float = 0.5  # code: joint horizontal and vertical flips, p 0.5 each
    affine_prob: float = 1.0  # code: joint random affine on every sample
    max_scale: float = 0.15  # code: scale, translation (fraction of the size), rotation (rad), shear ranges
    max_translation: float = 0.15
    max_rotation_rad: float = 0.7853981633974483  # pi / 4
    max_shear: float = 0.15
    intensity_prob: float = 0.5  # code: independent quadratic Bezier intensity curve per image, p 0.5
    validation: str = "auto"  # fide: "auto" (pre-alignment TRE when possible) | "prealign" | "bnce"
    val_pairs: int = 0  # fide: validation pairs with landmarks used per epoch (0 = all)
    # fide: scores within this of the lowest so far are ties, decided by the tie-break (held-out B-NCE); in TRE
    # pixels, 0.2 px at 834^2 is below what 4 validation pairs can resolve
    val_tolerance: float = 0.2
    seed: int = 0
