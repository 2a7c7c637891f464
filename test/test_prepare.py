"""fide.preprocess.prepare: the channels each modality pair is compared on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fide.preprocess import prepare_pair
from fide.preprocess.filters import layout_blur
from fide.preprocess.intensity import HE_STAINS

SIZE = 64


def _he_image(haematoxylin: torch.Tensor, eosin: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 255] absorbing the two stains' concentrations (H, W) by Beer-Lambert."""
    stains = HE_STAINS / HE_STAINS.norm(dim=1, keepdim=True)
    od = haematoxylin[None] * stains[0, :, None, None] + eosin[None] * stains[1, :, None, None]
    return (256.0 * 10.0 ** (-od) - 1.0).clamp(0, 255)


def test_bright_field_against_shg_is_eosin_for_intensity_and_haematoxylin_for_labels():
    """Left half cellular (nuclei-rich, pale eosin), right half stroma (eosin, few nuclei)."""
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    cellular = (cols < SIZE // 2).float()
    dots = ((rows % 4 == 0) & (cols % 4 == 0)).float()  # nuclei, where cellular
    bf = _he_image(0.1 + 0.6 * cellular * dots + 0.2 * cellular, 0.2 + 0.4 * (1 - cellular))
    shg = 1.0 + 40.0 * (1 - cellular)[None]
    fixed, moving = prepare_pair(shg, bf)
    assert fixed.colour.shape == (1, 1, SIZE, SIZE) and moving.colour.shape == (1, 2, SIZE, SIZE)
    torch.testing.assert_close(moving.colour[:, 1:], moving.tissue.float())  # a whole core's outline
    haematoxylin = moving.colour[:, :1]
    left, right = haematoxylin[..., : SIZE // 2].mean(), haematoxylin[..., SIZE // 2 :].mean()
    assert left > right + 0.2  # labels follow the nuclei
    assert moving.intensity[..., SIZE // 2 :].mean() > moving.intensity[..., : SIZE // 2].mean() + 0.3  # eosin


def test_bright_field_against_bright_field_keeps_rgb_labels():
    rgb = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 255
    fixed, moving = prepare_pair(rgb, rgb.flip(-1))
    torch.testing.assert_close(fixed.colour[0], rgb / 255.0)
    assert moving.intensity.shape == (1, 1, SIZE, SIZE)


@pytest.mark.parametrize("faint", [False, True])
def test_on_a_decoupled_core_the_label_channels_share_the_layout_grey_does_not(faint):
    """The regime where the fibres do not match (issue 25): inside the tissue, smoothed log-SHG against the
    haematoxylin channel anti-correlates (stroma bright in SHG, few nuclei), far more strongly than against grey."""
    from fide.synth.tissue import make_aligned_pair

    shg, bf, _ = make_aligned_pair(320, np.random.default_rng(6), independent_texture=True, faint=faint)
    fixed, moving = prepare_pair(torch.from_numpy(shg).float(), torch.from_numpy(bf).float())
    grey = torch.from_numpy(bf).float().mean(0)[None, None]
    inside = (fixed.tissue & moving.tissue).flatten()

    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = (layout_blur(x, 8.0).flatten()[inside] for x in (a, b))
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    with_haematoxylin = correlation(fixed.colour, moving.colour[:, :1])  # -0.59 / -0.66 when written
    with_grey = correlation(fixed.colour, grey)  # -0.05 / -0.01
    assert with_haematoxylin < -0.4
    assert abs(with_haematoxylin) > abs(with_grey) + 0.3
