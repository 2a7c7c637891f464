"""fide.align.match: the NCC surface and its sub-pixel peak that give each patch's shift."""

from __future__ import annotations

import numpy as np
import torch

from fide.align.match import _ncc_surface, _peak


def _texture(size: int, seed: int = 0) -> torch.Tensor:
    """(size, size) smooth random texture (a few cosines), float32."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    image = sum(
        np.cos(2 * np.pi * (f[0] * x + f[1] * y) / size + phase)
        for f, phase in zip(rng.uniform(1, 6, (8, 2)), rng.uniform(0, 2 * np.pi, 8))
    )
    return torch.from_numpy(image.astype(np.float32))


def test_the_peak_of_the_ncc_surface_is_the_patch_shift():
    """A template cut 3 px right and 2 px down of the search image's middle peaks at shift (3, 2) with NCC 1."""
    size, margin = 32, 6
    search = _texture(size + 2 * margin)
    template = search[margin + 3 : margin + 3 + size, margin + 2 : margin + 2 + size]
    surface = _ncc_surface(template, search)
    assert surface.shape == (2 * margin + 1, 2 * margin + 1)
    shift, peak, sharpness = _peak(surface, 3)
    np.testing.assert_allclose(shift, [3.0, 2.0], atol=0.01)  # parabolic vertex: exact at integer shifts to ~1e-3
    assert peak > 0.999 and sharpness > 0.02


def test_a_peak_on_the_search_border_matches_nothing():
    size, margin = 32, 4
    search = _texture(size + 2 * margin, seed=1)
    template = search[:size, margin : margin + size]  # shifted by the whole margin: on the border
    assert _peak(_ncc_surface(template, search), 2) is None
