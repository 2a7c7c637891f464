"""Data in and out: Learn2Reg descriptors, images, landmark CSVs and displacement fields. No maths here."""

from .dataset import SPLITS, Dataset, DatasetError, Pair, find_descriptor, load_dataset
from .fields import atomic_path, read_disp, write_disp, write_nifti
from .images import read_image, read_spacing
from .landmarks import read_landmark_pair, read_landmarks, write_landmarks

__all__ = [
    "SPLITS",
    "Dataset",
    "DatasetError",
    "Pair",
    "find_descriptor",
    "load_dataset",
    "atomic_path",
    "read_disp",
    "write_disp",
    "write_nifti",
    "read_image",
    "read_spacing",
    "read_landmark_pair",
    "read_landmarks",
    "write_landmarks",
]
