"""Training of the learned modality encoders (B-NCE): data, augmentation and the training loop."""

from .augment import augment_pair, bezier_curve, random_affine, random_intensity_curve
from .data import LoadedPair, PairedTrainingSet, ValidationPair, load_training_pair, load_validation_pairs
from .objective import bnce_objective
from .trainer import TrainResult, last_checkpoint_path, train
from .validate import Validator, bnce_validator, default_validator, prealign_tre_validator

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
