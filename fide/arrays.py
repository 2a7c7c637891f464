"""Array-likes in: the one conversion every public entry that takes points or images goes through.

Lists, tuples, numpy arrays of any strides (``points[:, ::-1]``, transposed or strided views), integer or float
dtypes and torch tensors (any device, with or without gradients) become C-contiguous numpy arrays, copied only when
needed; torch's ``from_numpy`` refuses negative strides, so nothing that reaches torch may keep them.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_array", "as_points", "as_tensor"]


def as_array(value, name: str, dtype: np.dtype | type | None = None) -> np.ndarray:
    """A C-contiguous numpy array of ``value`` (a copy only when its layout or ``dtype`` requires one).

    Args:
        value: list, tuple, numpy array (any strides) or torch tensor (any device).
        name: what the value is, for messages ("points", "moving image").
        dtype: the dtype to cast to; the value's own (numeric) dtype when None.

    Raises:
        ValueError: the value is not numeric (strings, objects, ragged lists) or not real (complex).
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__} ({err})") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise ValueError(f"{name} must be real, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


def as_points(value, name: str = "points") -> np.ndarray:
    """An (N, 2) C-contiguous float64 array of finite points (an empty list gives (0, 2)).

    Raises:
        ValueError: not (N, 2), or NaN / infinite values.
    """
    array = as_array(value, name, np.float64)
    if array.size == 0 and array.ndim <= 2:
        return array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got NaN or infinite values")
    return array


def as_tensor(value, name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A contiguous CPU tensor of ``value`` in ``dtype`` (through :func:`as_array`)."""
    numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype
    return torch.from_numpy(as_array(value, name, numpy_dtype))
