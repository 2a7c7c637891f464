"""Synthetic SHG / bright-field tissue-microarray pairs with exact ground truth (``fide synth``)."""

from .misalign import Misalignment, pick_landmarks, random_misalignment, warp_to_moving
from .task import make_pair, make_task, write_image
from .tissue import TissueInfo, make_aligned_pair

__all__ = [
    "Misalignment",
    "TissueInfo",
    "make_aligned_pair",
    "make_pair",
    "make_task",
    "pick_landmarks",
    "random_misalignment",
    "warp_to_moving",
    "write_image",
]
