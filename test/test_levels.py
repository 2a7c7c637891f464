"""fide.geometry.levels: one resolution of a pair, the base of every stage's level."""

from dataclasses import dataclass

import torch

from fide import geometry
from fide.geometry.levels import PairLevel, level_shapes


def test_level_shapes_keep_one_factor_for_both_images():
    assert level_shapes((834, 600), (1668, 1200), 417) == ((417, 300), (834, 600))
    assert level_shapes((100, 50), (80, 80), 400) == ((100, 50), (80, 80))  # never enlarged by default
    assert level_shapes((100, 50), (80, 80), 200, enlarge=True) == ((200, 100), (160, 160))
    assert level_shapes((400, 20), (400, 20), 40) == ((40, 8), (40, 8))  # every side at least min_side
    assert level_shapes((400, 20), (400, 20), 40, min_side=2) == ((40, 2), (40, 2))


def test_down_and_up_carry_an_affine_between_full_resolution_and_the_level():
    full, small = ((834, 600), (1000, 700)), level_shapes((834, 600), (1000, 700), 256)
    level = PairLevel.between(full, small)
    affine = torch.tensor([[0.9, 0.2, 13.0], [-0.1, 1.1, -7.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    points = torch.tensor([[0.0, 0.0], [833.0, 599.0], [400.0, 17.0]], dtype=torch.float64)
    # a fixed point at full resolution, mapped at the level and brought back, lands where the full affine puts it
    to_level = [torch.tensor(f, dtype=torch.float64) for f in (level.fixed_factors, level.moving_factors)]
    at_level = geometry.apply_affine_to_points(level.down(affine), points * to_level[0])
    assert torch.allclose(at_level / to_level[1], geometry.apply_affine_to_points(affine, points), atol=1e-9)
    assert torch.allclose(level.up(level.down(affine)), affine, atol=1e-12)


def test_a_stage_level_is_built_with_its_own_fields():
    @dataclass
    class Payload(PairLevel):
        image: str

    level = Payload.between(((10, 10), (20, 20)), ((5, 5), (10, 10)), image="x")
    assert level.image == "x" and level.fixed_factors == (4 / 9, 4 / 9) and level.moving_factors == (9 / 19, 9 / 19)
