"""Which features feed matching and LNCC: the learned encoders or handcrafted MIND-SSC, chosen once per run."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from fide.config import EncoderConfig

from .encoders import DEFAULT_WEIGHTS, ModalityEncoders, load_encoders

__all__ = ["FEATURE_CHOICES", "resolve_encoders"]

logger = logging.getLogger(__name__)

FEATURE_CHOICES = ("auto", "learned", "handcrafted")


def resolve_encoders(cfg: EncoderConfig, device: torch.device | None = None) -> ModalityEncoders | None:
    """Load the encoders the configuration asks for; None means handcrafted features.

    "auto" uses the learned encoders when their weights exist (the shipped ones by default) and MIND-SSC otherwise;
    "learned" without weights is an error, never a silent fall-back.
    """
    if cfg.features not in FEATURE_CHOICES:
        raise ValueError(f"features must be one of {FEATURE_CHOICES}, got {cfg.features!r}")
    if cfg.features == "handcrafted":
        return None
    weights = Path(cfg.weights) if cfg.weights else DEFAULT_WEIGHTS
    if not weights.is_file():
        if cfg.features == "learned":
            raise ValueError(f"{weights}: encoder weights not found (features='learned')")
        logger.info("no encoder weights at %s: using handcrafted MIND-SSC features", weights)
        return None
    return load_encoders(weights, device)
