"""fide.synth.random_fields: the noise field's normalisation and feature size, points drawn from a density."""

import numpy as np

from fide.synth.random_fields import sample_points, smooth_noise


def test_smooth_noise_is_standardised_and_its_features_are_about_the_scale_wide():
    fine, coarse = (smooth_noise((256, 256), scale, np.random.default_rng(0)) for scale in (4.0, 32.0))
    for field in (fine, coarse):
        assert field.dtype == np.float32 and field.shape == (256, 256)
        assert abs(float(field.mean())) < 1e-5 and abs(float(field.std()) - 1) < 1e-3
    # neighbours 8 px apart: decorrelated for 4 px features, still alike for 32 px ones
    lag = lambda f: float(np.corrcoef(f[:, :-8].ravel(), f[:, 8:].ravel())[0, 1])  # noqa: E731
    assert lag(fine) < 0.3 < 0.8 < lag(coarse)


def test_sample_points_fall_where_the_density_is_and_a_seed_repeats_them():
    density = np.zeros((64, 64))
    density[10:20, 40:50] = 1.0
    points = sample_points(density, 500, np.random.default_rng(1))
    assert points.shape == (500, 2)
    assert (points[:, 0] >= 9.5).all() and (points[:, 0] <= 19.5).all()  # pixel centres ± half a pixel
    assert (points[:, 1] >= 39.5).all() and (points[:, 1] <= 49.5).all()
    np.testing.assert_array_equal(points, sample_points(density, 500, np.random.default_rng(1)))
    assert sample_points(np.zeros((8, 8)), 5, np.random.default_rng(0)).shape == (0, 2)
