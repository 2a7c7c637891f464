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
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from fide.config import TrainConfig
from fide.features.encoders import (
    ModalityEncoders,
    load_checkpoint,
    save_checkpoint,
)
from fide.io import DatasetError, load_dataset

from .data import PairedTrainingSet, load_training_pair
from .objective import loss_from_config, pair_loss, step_generator
from .validate import VALIDATIONS, Validator, default_validator

__all__ = ["TrainResult", "last_checkpoint_path", "train"]

logger = logging.getLogger(__name__)

_CHECKPOINT_EVERY_STEPS = 50


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
    network: dict[str, Any] | None = None,
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
        network: arguments of a new :class:`ModalityEncoders` (``out_channels``, ``features``, ``size_px``), its
            defaults where missing; a resumed run keeps its own.
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
    hparams = resumed["hparams"] if resumed else dict(network or {})
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
    loss_fn = loss_from_config(cfg)

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
            generator = step_generator(cfg.seed, state["step"], rank)
            loss = pair_loss(model, item, loss_fn, cfg, generator, cfg.patch_px)
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
