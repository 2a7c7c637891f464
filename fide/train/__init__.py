"""Training of the learned modality encoders (B-NCE): data, augmentation and the training loop."""

from .augment import augment_pair, bezier_curve, random_affine, random_intensity_curve
from .data import LoadedPair, PairedTrainingSet, ValidationPair, load_training_pair, load_validation_pairs
from .trainer import (
    TrainResult,
    Validator,
    bnce_objective,
    bnce_validator,
    default_validator,
    last_checkpoint_path,
    prealign_tre_validator,
    train,
)

__all__ = [
    "augment_pair",
    "bezier_curve",
    "random_affine",
    "random_intensity_curve",
    "LoadedPair",
    "PairedTrainingSet",
    "ValidationPair",
    "load_training_pair",
    "load_validation_pairs",
    "TrainResult",
    "Validator",
    "bnce_objective",
    "bnce_validator",
    "default_validator",
    "last_checkpoint_path",
    "prealign_tre_validator",
    "train",
]
