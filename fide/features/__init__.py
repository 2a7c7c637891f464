"""Features: k-means label maps, handcrafted MIND-SSC descriptors and the learned modality encoders."""

from .labels import kmeans_labels, one_hot_labels
from .mind import mind_ssc

__all__ = ["kmeans_labels", "one_hot_labels", "mind_ssc"]

# learned modality encoders (B-NCE)
from .encoders import (  # noqa: E402
    DEFAULT_WEIGHTS,
    ModalityEncoders,
    default_weights_available,
    encode,
    learned_features,
    load_encoders,
)

__all__ += [
    "DEFAULT_WEIGHTS",
    "ModalityEncoders",
    "default_weights_available",
    "encode",
    "learned_features",
    "load_encoders",
]
