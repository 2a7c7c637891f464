"""fide.arrays: every array-like becomes a contiguous numpy array; bad values fail with the parameter's name."""

import numpy as np
import pytest
import torch

from fide.arrays import as_array, as_points, as_tensor

BASE = np.arange(12, dtype=np.int32).reshape(6, 2)


@pytest.mark.parametrize(
    "value",
    [
        BASE.tolist(),
        tuple(map(tuple, BASE.tolist())),
        BASE,
        BASE.astype(np.float32),
        np.ascontiguousarray(BASE[:, ::-1])[:, ::-1],  # negative strides
        np.asfortranarray(BASE),
        np.stack([BASE[:, 0], np.zeros(6), BASE[:, 1]], 1)[:, ::2],  # non-unit strides
        torch.from_numpy(BASE.copy()),
        torch.from_numpy(BASE.astype(np.float64)).requires_grad_(True),
    ],
    ids=["list", "tuple", "int32", "float32", "negative", "fortran", "strided", "torch", "torch-grad"],
)
def test_every_array_like_gives_the_same_contiguous_float64_points(value):
    points = as_points(value)
    assert points.dtype == np.float64 and points.flags.c_contiguous and np.array_equal(points, BASE)
    assert torch.equal(torch.from_numpy(points), torch.from_numpy(BASE.astype(np.float64)))  # no stride error


def test_flipped_views_and_dtypes():
    flipped = as_points(BASE[:, ::-1])
    assert np.array_equal(flipped, BASE[:, [1, 0]]) and flipped.flags.c_contiguous
    assert as_points([]).shape == (0, 2)
    image = np.arange(24, dtype=np.uint16).reshape(4, 6)[::-1, ::-2]
    array = as_array(image, "image")
    assert array.dtype == np.uint16 and array.flags.c_contiguous and np.array_equal(array, image)
    assert as_tensor(image, "image").dtype == torch.float64


@pytest.mark.parametrize(
    "value, message",
    [
        (np.zeros((3, 3)), r"points must have shape \(N, 2\)"),
        ([[0.0, np.nan]], "finite"),
        (["a", "b"], "numeric"),
        ([[1, 2], [3]], "numeric"),
        (np.zeros((2, 2), complex), "real"),
    ],
)
def test_bad_values_name_the_parameter(value, message):
    with pytest.raises(ValueError, match=message):
        as_points(value)
