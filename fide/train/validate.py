"""Validators of ``fide train`` (pre-alignment TRE on landmark pairs, or held-out B-NCE): the checkpoint criterion."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from fide import geometry
from fide.config import FideConfig, PreprocessConfig, TrainConfig
from fide.features.encoders import ModalityEncoders, learned_features, minmax_normalise, working_shape
from fide.io import DatasetError, load_dataset
from fide.preprocess import bf_tissue, shg_foreground

from .data import LoadedPair, PairedTrainingSet, ValidationPair, load_validation_pairs
from .objective import loss_from_config, pair_loss, step_generator

__all__ = ["Validator", "VALIDATIONS", "prealign_tre_validator", "bnce_validator", "default_validator"]

logger = logging.getLogger(__name__)

# scores the encoders; the returned dict holds "score" (lower is better), optionally "tiebreak" (lower is better;
# decides between scores within TrainConfig.val_tolerance of the lowest one) and any extra figures to log
Validator = Callable[[ModalityEncoders], dict[str, float]]

# checkpoint criteria, see default_validator
VALIDATIONS = ("auto", "prealign", "bnce")


def prealign_tre_validator(pairs: list[ValidationPair], device: torch.device | None = None) -> Validator | None:
    """Mean landmark error after the pipeline's pre-alignment (``stages="prealign"``) with the learned features.

    Uses ``fide.pipeline.register_pair``: with ``encoders=`` when it takes them, else with ``features=`` serving the
    learned maps (:func:`~fide.features.encoders.learned_features`).

    Returns:
        The validator (score = mean TRE over pairs, full-resolution pixels), or None when there are no pairs or the
        pipeline cannot be imported.
    """
    if not pairs:
        return None
    try:
        from fide.pipeline import register_pair
    except ImportError as err:
        logger.warning("pre-alignment validation unavailable (%s)", err)
        return None
    params = inspect.signature(register_pair).parameters
    cfg = FideConfig(stages="prealign")

    def validate(encoders: ModalityEncoders) -> dict[str, float]:
        errors, failures = [], 0
        for pair in pairs:
            try:
                if "encoders" in params:
                    result = register_pair(pair.fixed, pair.moving, cfg, device=device, encoders=encoders)
                else:
                    features = learned_features(pair.fixed.to(device), pair.moving.to(device), encoders)
                    result = register_pair(pair.fixed, pair.moving, cfg, device=device, features=features)
                mapped = geometry.map_points(pair.fixed_points.float(), result.disp.detach().cpu().float())
            except RuntimeError as err:  # a pipeline failure scores as no registration, and is counted
                logger.warning("validation pair %s: pipeline failed (%s); scored as unregistered", pair.name, err)
                failures += 1
                mapped = pair.fixed_points.float()
            errors.append(float((mapped - pair.moving_points.float()).norm(dim=1).mean()))
        tre = sum(errors) / len(errors)
        return {"score": tre, "tre_px": tre, "tre_max_px": max(errors), "failures": float(failures)}

    return validate


def _align_by_landmarks(pair: ValidationPair, size_px: int) -> LoadedPair:
    """Warp the moving image onto the fixed grid with the landmarks' least-squares affine; masks as in training."""
    src = torch.cat([pair.fixed_points, torch.ones(len(pair.fixed_points), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(src, pair.moving_points).solution  # (3, 2): [p, 1] @ X = q
    affine = torch.eye(3, dtype=torch.float64)
    affine[:2] = solution.T
    shape = tuple(pair.fixed.shape[-2:])
    disp = geometry.affine_to_disp(affine[None].float(), shape)
    moving = geometry.warp(pair.moving[None].float(), disp, padding_mode="border")
    fixed = pair.fixed[None].float()
    factor = min(1.0, size_px / max(shape))
    small = working_shape(shape, factor)

    def down(image: torch.Tensor) -> torch.Tensor:
        return geometry.downsample(image, small) if factor < 1 else image

    preprocess = PreprocessConfig()
    return LoadedPair(
        down(minmax_normalise(fixed)).clamp(0, 1),
        down(minmax_normalise(moving)).clamp(0, 1),
        (down(shg_foreground(fixed, preprocess.shg_threshold).float()) > 0.25).float(),
        (down(bf_tissue(moving).float()) > 0.25).float(),
        pair.name,
    )


def bnce_validator(pairs: list[LoadedPair], cfg: TrainConfig, device: torch.device | None = None) -> Validator:
    """Mean B-NCE (both directions, weighted) over un-augmented aligned pairs, fixed patch draws per pair."""
    loss_fn = loss_from_config(cfg)
    samples = PairedTrainingSet(pairs, cfg, augment=False)

    def validate(encoders: ModalityEncoders) -> dict[str, float]:
        was_training = encoders.training
        encoders.eval()
        total = 0.0
        with torch.no_grad():
            for index in range(len(samples)):
                item = {k: v[None].to(device) for k, v in samples[index].items()}
                patch_px = min(cfg.patch_px, *item["fixed"].shape[-2:])
                generator = step_generator(cfg.seed, index, -1)
                total += float(pair_loss(encoders, item, loss_fn, cfg, generator, patch_px))
        encoders.train(was_training)
        value = total / len(samples)
        return {"score": value, "bnce": value, "tiebreak": value}  # any decrease counts, whatever the tolerance

    return validate


def default_validator(
    dataset_path: str | Path,
    cfg: TrainConfig,
    size_px: int,
    device: torch.device | None = None,
    training_pairs: list[LoadedPair] | None = None,
) -> tuple[str, Validator]:
    """The validator ``fide train`` uses, chosen by ``cfg.validation`` and availability.

    1. "auto" or "prealign", ``registration_val`` pairs with landmarks and an importable pipeline: pre-alignment TRE
       (the code's checkpoint criterion). "prealign" without them is an error.
    2. "bnce", or "auto" without the pipeline: held-out B-NCE on the validation pairs with landmarks, aligned by their
       landmarks' least-squares affine.
    3. No validation pairs with landmarks: B-NCE on the un-augmented training pairs (not held out; its name says so).

    Returns:
        (name, validator).

    Raises:
        ValueError: unknown ``cfg.validation``, or "prealign" impossible.
    """
    if cfg.validation not in VALIDATIONS:
        raise ValueError(f"validation must be one of {VALIDATIONS}, got {cfg.validation!r}")
    dataset = load_dataset(dataset_path)
    pairs = load_validation_pairs(dataset.split("val"), cfg.val_pairs)
    if cfg.validation != "bnce":
        tre_validator = prealign_tre_validator(pairs, device)
        if tre_validator is not None:
            bnce = bnce_validator([_align_by_landmarks(p, size_px) for p in pairs], cfg, device)

            def validator(encoders: ModalityEncoders) -> dict[str, float]:
                held_out = bnce(encoders)["score"]  # breaks ties: the TRE moves in steps when matches are rejected
                return {**tre_validator(encoders), "val_bnce": held_out, "tiebreak": held_out}

            return "prealign_tre", validator
        if cfg.validation == "prealign":
            raise ValueError(
                f"validation 'prealign' needs registration_val pairs with landmarks in {dataset.path} and an "
                "importable fide.pipeline"
            )
    if pairs:
        return "val_bnce", bnce_validator([_align_by_landmarks(p, size_px) for p in pairs], cfg, device)
    if not training_pairs:
        raise DatasetError(f"{dataset.path}: nothing to validate on (no validation landmarks, no training pairs)")
    logger.warning("no validation pairs with landmarks: validating on the training pairs (not held out)")
    return "train_bnce", bnce_validator(training_pairs, cfg, device)
