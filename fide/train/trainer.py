"""B-NCE training of the modality encoders: optimisation loop, validation, checkpoints, resume and DDP.

One step = one augmented aligned pair (code: batch size 1 pair): both maps are computed, ``num_patches`` patches
are drawn inside the BF tissue mask (set 1, direction BF -> SHG) and inside the SHG foreground (set 2, SHG -> BF),
and ``loss = nce_weight * (NCE_BF->SHG + NCE_SHG->BF)`` is minimised with Adam (amsgrad, gradient clipping).

After every epoch a validator scores the encoders (lower is better) and the best encoders are written to ``out``;
the full training state (optimiser, counters, history) goes to ``<out stem>.last.pt`` for ``resume``.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) the loop runs as standard PyTorch DDP: one process per device,
``DistributedDataParallel`` over the encoder pair, a ``DistributedSampler`` sharding the pairs; rank 0 validates,
logs and writes checkpoints.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from fide import geometry
from fide.config import EncoderConfig, FideConfig, PreprocessConfig, TrainConfig
from fide.features.encoders import (
    ModalityEncoders,
    learned_features,
    load_checkpoint,
    minmax_normalise,
    save_checkpoint,
    working_shape,
)
from fide.io import DatasetError, load_dataset
from fide.losses import BatchNCELoss, extract_patches, sample_patch_corners
from fide.preprocess import bf_tissue, shg_foreground

from .data import LoadedPair, PairedTrainingSet, ValidationPair, load_training_pair, load_validation_pairs

__all__ = [
    "Validator",
    "TrainResult",
    "bnce_objective",
    "prealign_tre_validator",
    "bnce_validator",
    "default_validator",
    "VALIDATIONS",
    "last_checkpoint_path",
    "train",
]

logger = logging.getLogger(__name__)

# scores the encoders; the returned dict holds "score" (lower is better), optionally "tiebreak" (lower is better;
# decides between scores within TrainConfig.val_tolerance of the lowest one) and any extra figures to log
Validator = Callable[[ModalityEncoders], dict[str, float]]

_CHECKPOINT_EVERY_STEPS = 50
# checkpoint criteria, see default_validator
VALIDATIONS = ("auto", "prealign", "bnce")


@dataclass
class TrainResult:
    """Summary of a :func:`train` run (rank 0's view).

    Attributes:
        best_path: the best encoders (``out``).
        last_path: the resumable training state.
        steps: optimiser steps done in total (resumed runs included).
        epochs: epochs completed.
        best_score: the validator's best score (lower is better); inf when never validated.
        validation: the validator's name.
        history: per-validation records (epoch, step, train loss, validator figures).
        seconds: training wall time in total (resumed runs included).
    """

    best_path: Path
    last_path: Path
    steps: int
    epochs: int
    best_score: float
    validation: str
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def last_checkpoint_path(out: str | Path) -> Path:
    """Where the resumable state of a run writing ``out`` lives: ``<stem>.last.pt`` next to it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.last.pt")


def _check_train_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.max_steps < 0:
        raise ValueError(f"max_steps must be >= 0 (0 = no cap), got {cfg.max_steps}")
    if cfg.validation not in VALIDATIONS:
        raise ValueError(f"validation must be one of {VALIDATIONS}, got {cfg.validation!r}")
    if cfg.val_tolerance < 0:
        raise ValueError(f"val_tolerance must be >= 0, got {cfg.val_tolerance}")
    if cfg.num_patches < 2:
        raise ValueError(f"num_patches must be >= 2 (the embedding dimension), got {cfg.num_patches}")
    if cfg.patch_px < 1 or cfg.crop_px < cfg.patch_px:
        raise ValueError(f"need 1 <= patch_px <= crop_px, got patch_px={cfg.patch_px}, crop_px={cfg.crop_px}")
    if not 0 <= cfg.max_scale < 1:
        raise ValueError(f"max_scale must be in [0, 1), got {cfg.max_scale}")
    for name in ("flip_prob", "affine_prob", "intensity_prob"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(cfg, name)}")


def bnce_objective(
    fixed_map: torch.Tensor,
    moving_map: torch.Tensor,
    fixed_mask: torch.Tensor,
    moving_mask: torch.Tensor,
    loss_fn: BatchNCELoss,
    num_patches: int,
    patch_px: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions of B-NCE on one aligned pair of maps (unweighted; the caller applies ``nce_weight``).

    Args:
        fixed_map: (1, D, H, W) SHG representation.
        moving_map: (1, D, H, W) bright-field representation, same grid.
        fixed_mask: (1, 1, H, W) SHG foreground: set 2 patches must contain some.
        moving_mask: (1, 1, H, W) BF tissue: set 1 patches must contain some.
        loss_fn: one-direction B-NCE (anchors = ``pred``).
        num_patches: patches per set.
        patch_px: patch side, pixels.
        generator: patch-position random source.

    Returns:
        NCE BF -> SHG (set 1) and NCE SHG -> BF (set 2), scalars, minimised.
    """
    if fixed_map.shape != moving_map.shape or fixed_map.shape[0] != 1:
        raise ValueError(
            f"maps must be (1, D, H, W) on one grid, got {tuple(fixed_map.shape)} and {tuple(moving_map.shape)}"
        )
    set1 = sample_patch_corners(moving_mask, num_patches, patch_px, generator)
    set2 = sample_patch_corners(fixed_mask, num_patches, patch_px, generator)
    bf_to_shg = loss_fn(extract_patches(moving_map, set1, patch_px), extract_patches(fixed_map, set1, patch_px))
    shg_to_bf = loss_fn(extract_patches(fixed_map, set2, patch_px), extract_patches(moving_map, set2, patch_px))
    return bf_to_shg, shg_to_bf


def _loss_fn(cfg: TrainConfig) -> BatchNCELoss:
    return BatchNCELoss(cfg.critic, cfg.temperature, cfg.pool_kernel, cfg.pool_stride)


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank + 1)


# ---------------------------------------------------------------------------------------------------- validation


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
        (down(bf_tissue(moving, preprocess).float()) > 0.25).float(),
        pair.name,
    )


def bnce_validator(pairs: list[LoadedPair], cfg: TrainConfig, device: torch.device | None = None) -> Validator:
    """Mean B-NCE (both directions, weighted) over un-augmented aligned pairs, fixed patch draws per pair."""
    loss_fn = _loss_fn(cfg)
    samples = PairedTrainingSet(pairs, cfg, augment=False)

    def validate(encoders: ModalityEncoders) -> dict[str, float]:
        was_training = encoders.training
        encoders.eval()
        total = 0.0
        with torch.no_grad():
            for index in range(len(samples)):
                item = {k: v[None].to(device) for k, v in samples[index].items()}
                fixed_map, moving_map = encoders(item["fixed"], item["moving"])
                generator = _step_generator(cfg.seed, index, -1)
                parts = bnce_objective(
                    fixed_map,
                    moving_map,
                    item["fixed_mask"],
                    item["moving_mask"],
                    loss_fn,
                    cfg.num_patches,
                    min(cfg.patch_px, *fixed_map.shape[-2:]),
                    generator,
                )
                total += float(cfg.nce_weight * sum(parts))
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


# ---------------------------------------------------------------------------------------------------- DDP set-up


def _init_distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group).

    Distributed when launched by torchrun (``WORLD_SIZE`` > 1: the group is started here, NCCL on CUDA, gloo on
    CPU) or when the caller already started a process group; single-process otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return 0, 1, device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, started


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------------------------------- training


def _state_payload(state: dict[str, Any], optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> dict[str, Any]:
    return {"optimizer": optimizer.state_dict(), "train_state": state, "train_config": asdict(cfg)}


def train(
    dataset_path: str | Path,
    out: str | Path,
    cfg: TrainConfig | None = None,
    encoder_cfg: EncoderConfig | None = None,
    *,
    device: torch.device | str | None = None,
    resume: bool = False,
    validator: Validator | None = None,
    validation_name: str = "custom",
    progress: bool = True,
) -> TrainResult:
    """Train the encoder pair with B-NCE on a dataset's ``training_paired_images``.

    Args:
        dataset_path: Learn2Reg descriptor (``<TASK>_dataset.json``).
        out: where the best encoders go (``.pt``); the resumable state goes to :func:`last_checkpoint_path`.
        cfg: optimisation, augmentation, B-NCE and validation settings.
        encoder_cfg: network (``out_channels``, ``unet_features``, ``size_px``); a resumed run keeps its own.
        device: compute device (CPU when None); under torchrun CUDA ranks use ``LOCAL_RANK``.
        resume: continue from the state file when it exists (a fresh start otherwise).
        validator: custom scorer; :func:`default_validator` when None.
        validation_name: the custom validator's name (logs and checkpoint metadata).
        progress: show a progress bar (rank 0).

    Returns:
        The run's summary (meaningful on rank 0).

    Raises:
        DatasetError: no training pairs, or unusable files.
        ValueError: invalid settings.
    """
    cfg = cfg or TrainConfig()
    encoder_cfg = encoder_cfg or EncoderConfig()
    _check_train_config(cfg)
    out = Path(out)
    last_path = last_checkpoint_path(out)
    rank, world, device, owns_group = _init_distributed(torch.device(device or "cpu"))
    distributed = dist.is_initialized()
    started = time.perf_counter()

    dataset = load_dataset(dataset_path)
    train_pairs = dataset.split("train")
    if not train_pairs:
        raise DatasetError(f"{dataset.path}: training_paired_images is empty, nothing to train on")

    resumed = load_checkpoint(last_path) if resume and last_path.is_file() else None
    hparams = (
        resumed["hparams"]
        if resumed
        else {
            "out_channels": encoder_cfg.out_channels,
            "features": list(encoder_cfg.unet_features),
            "size_px": encoder_cfg.size_px,
        }
    )
    torch.manual_seed(cfg.seed)
    encoders = ModalityEncoders(**hparams)
    if resumed:
        encoders.load_state_dict(resumed["state_dict"])
    encoders.to(device).train()
    optimizer = torch.optim.Adam(
        encoders.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad
    )
    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "epoch_step": 0,
        "best_score": math.inf,
        "min_score": math.inf,
        "best_tiebreak": math.inf,
        "best_epoch": -1,
        "best_step": 0,
        "seconds": 0.0,
        "history": [],
    }
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        state.update(resumed["train_state"])
        state["min_score"] = min(state["min_score"], state["best_score"])
        logger.info("resumed %s at epoch %d, step %d", last_path, state["epoch"], state["step"])
    elif resume:
        logger.info("no state at %s: starting afresh", last_path)
    seconds_before = float(state["seconds"])

    loaded = [load_training_pair(p, encoders.size_px) for p in train_pairs]
    train_set = PairedTrainingSet(loaded, cfg)
    if validator is None:
        if rank == 0:
            validation_name, validator = default_validator(dataset_path, cfg, encoders.size_px, device, loaded)
        else:
            validation_name, validator = "rank0", lambda _: {"score": math.inf}
    logger.info(
        "training on %d pairs (%s), working size %d px, validation: %s, device %s, world %d",
        len(loaded),
        dataset.name,
        encoders.size_px,
        validation_name,
        device,
        world,
    )
    model = encoders
    if distributed:
        model = DistributedDataParallel(encoders, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loss_fn = _loss_fn(cfg)

    def save_state() -> None:
        if rank == 0:
            state["seconds"] = seconds_before + time.perf_counter() - started
            save_checkpoint(last_path, encoders, **_state_payload(state, optimizer, cfg))

    def validate_and_keep(epoch_loss: float) -> None:
        if rank == 0:
            was_training = encoders.training
            encoders.eval()
            figures = validator(encoders)
            encoders.train(was_training)
            record = {"epoch": state["epoch"], "step": state["step"], "train_loss": epoch_loss, **figures}
            state["history"].append(record)
            tiebreak = figures.get("tiebreak", math.inf)
            lowest = state["min_score"]  # ties are judged against the lowest score, so they cannot ratchet upwards
            improved = figures["score"] < lowest - cfg.val_tolerance or (
                figures["score"] <= lowest + cfg.val_tolerance and tiebreak < state["best_tiebreak"]
            )
            state["min_score"] = min(lowest, figures["score"])
            if improved:
                state.update(
                    best_score=figures["score"],
                    best_tiebreak=tiebreak,
                    best_epoch=state["epoch"],
                    best_step=state["step"],
                )
                meta = {
                    "dataset": str(dataset.path),
                    "validation": validation_name,
                    "figures": figures,
                    "epoch": state["epoch"],
                    "step": state["step"],
                    "date": datetime.date.today().isoformat(),
                    "train_config": asdict(cfg),
                }
                save_checkpoint(out, encoders, training=meta)
            logger.info(
                "epoch %d step %d: loss %.4f, %s %s%s",
                state["epoch"],
                state["step"],
                epoch_loss,
                validation_name,
                ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "score"),
                " (best)" if improved else "",
            )
            save_state()
        _barrier()

    stop = cfg.max_steps > 0 and state["step"] >= cfg.max_steps
    while not stop and state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        indices = list(sampler)[state["epoch_step"] :]
        bar = tqdm(indices, desc=f"epoch {epoch}", disable=not progress or rank != 0, leave=False, unit="pair")
        losses: list[float] = []
        for index in bar:
            item = {k: v[None].to(device) for k, v in train_set[index].items()}
            fixed_map, moving_map = model(item["fixed"], item["moving"])
            generator = _step_generator(cfg.seed, state["step"], rank)
            parts = bnce_objective(
                fixed_map,
                moving_map,
                item["fixed_mask"],
                item["moving_mask"],
                loss_fn,
                cfg.num_patches,
                cfg.patch_px,
                generator,
            )
            loss = cfg.nce_weight * (parts[0] + parts[1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(encoders.parameters(), cfg.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            state["step"] += 1
            state["epoch_step"] += 1
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", step=state["step"])
            if state["step"] % _CHECKPOINT_EVERY_STEPS == 0:
                save_state()
            if cfg.max_steps > 0 and state["step"] >= cfg.max_steps:
                stop = True
                break
        bar.close()
        epoch_loss = sum(losses) / max(len(losses), 1)
        if not stop:
            state["epoch"] += 1
            state["epoch_step"] = 0
        validate_and_keep(epoch_loss)

    if rank == 0 and not out.is_file():  # e.g. resumed after the last epoch: keep the promise of a file at out
        save_checkpoint(out, encoders, training={"validation": validation_name, "step": state["step"]})
    seconds = seconds_before + time.perf_counter() - started
    if owns_group:
        dist.destroy_process_group()
    return TrainResult(
        out,
        last_path,
        int(state["step"]),
        int(state["epoch"]),
        float(state["best_score"]),
        validation_name,
        list(state["history"]),
        seconds,
    )
