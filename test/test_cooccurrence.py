"""Joint label counts at every shift by FFT (fide/features/cooccurrence.py)."""

import pytest
import torch

from fide.features.cooccurrence import correlation_at_shifts, joint_counts_at_shifts, peak_position


@pytest.mark.parametrize("size", [(40, 40), (36, 45)])
def test_pruned_inverse_fft_equals_irfft2_at_the_kept_shifts(size):
    """The correlations at shifts -S..S are torch's irfft2 read at those shifts."""
    generator = torch.Generator().manual_seed(0)
    spectrum = torch.fft.rfft2(torch.randn(3, 2, *size, generator=generator))
    full = torch.fft.irfft2(spectrum, s=size)
    shifts = torch.arange(-7, 8)
    expected = full[..., shifts % size[0], :][..., shifts % size[1]]
    assert torch.allclose(correlation_at_shifts(spectrum, size, 7), expected, atol=1e-5)
    assert torch.allclose(correlation_at_shifts(spectrum, size, None), full)


def test_joint_counts_are_the_label_cooccurrences_of_each_shift():
    """Entry [b, a, c, t] counts the canvas pixels q with fixed label a at q and moving label c at q + t."""
    generator = torch.Generator().manual_seed(1)
    fixed_labels = torch.randint(0, 3, (20, 24), generator=generator)
    moving_labels = torch.randint(0, 4, (2, 20, 24), generator=generator)
    reach = 3
    pad = (reach,) * 4
    fixed = torch.nn.functional.pad(torch.nn.functional.one_hot(fixed_labels, 3).permute(2, 0, 1).float(), pad)
    moving = torch.nn.functional.one_hot(moving_labels, 4).permute(0, 3, 1, 2).float()
    moving = torch.nn.functional.pad(moving, pad)  # zero outside: those pixels count nowhere
    counts = joint_counts_at_shifts(fixed, moving, reach)
    assert counts.shape == (2, 3, 4, 7, 7)
    for b, (dy, dx) in [(0, (0, 0)), (1, (2, -3)), (0, (-3, 1))]:
        expected = torch.zeros(3, 4)
        for i in range(20):
            for j in range(24):
                y, x = i + dy, j + dx
                if 0 <= y < 20 and 0 <= x < 24:
                    expected[fixed_labels[i, j], moving_labels[b, y, x]] += 1
        assert torch.allclose(counts[b, :, :, dy + reach, dx + reach], expected, atol=1e-3)


def test_parabolic_vertex_finds_the_apex_of_three_samples_and_stays_put_where_they_do_not_curve_down():
    from fide.features.cooccurrence import parabolic_vertex

    def parabola(x: float) -> float:
        return 2.0 - 3.0 * (x - 0.3) ** 2

    assert parabolic_vertex(parabola(-1), parabola(0), parabola(1)) == pytest.approx(0.3)
    assert parabolic_vertex(1.0, 1.0, 1.0) == 0.0  # flat: no curvature
    assert parabolic_vertex(0.0, 1.0, 2.0) == 0.0  # a straight rise is not a peak


def test_the_shift_peak_is_refined_between_pixels_and_stays_whole_at_the_map_edge():
    """A paraboloid sampled on whole pixels gives back its apex; a maximum on the map's edge is not extrapolated."""
    grid = torch.arange(7, dtype=torch.float32)
    apex = torch.tensor([3.3, 2.6])
    scores = -((grid[:, None] - apex[0]) ** 2) - 0.5 * (grid[None, :] - apex[1]) ** 2
    assert torch.allclose(peak_position(scores), apex, atol=1e-4)
    edge = -((grid[:, None] - 0.0) ** 2) - (grid[None, :] - 3.0) ** 2
    assert torch.equal(peak_position(edge), torch.tensor([0.0, 3.0]))


def test_sampled_peak_refines_the_best_sample_of_an_evenly_spaced_curve():
    """A parabola sampled every 0.3 gives back its apex; a maximum at either end of the samples stays there."""
    from fide.features.cooccurrence import sampled_peak

    grid = (-0.6, -0.3, 0.0, 0.3, 0.6)
    assert sampled_peak([1.0 - (x - 0.17) ** 2 for x in grid], grid) == pytest.approx(0.17)
    assert sampled_peak([x for x in grid], grid) == 0.6  # rising all the way: the last sample
