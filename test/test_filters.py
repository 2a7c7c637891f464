import pytest
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter

from fide.preprocess.filters import gaussian_blur, gaussian_blurs, smooth_fft_length, square_dilation


def _smooth_factors_only(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


@pytest.mark.parametrize("n", [1, 2, 7, 97, 419, 838, 1025])
def test_fft_length_is_the_smallest_5_smooth_length_not_below_n(n):
    length = smooth_fft_length(n)
    assert length >= n and _smooth_factors_only(length)
    assert not any(_smooth_factors_only(m) for m in range(n, length))


@pytest.mark.parametrize(
    "shape, sigma",
    [((2, 3, 37, 53), 1.0), ((1, 1, 64, 40), 4.0), ((1, 1, 9, 14), 6.0), ((1, 2, 30, 31), 0.3)],
)
def test_gaussian_blur_equals_monai_gaussian_filter_zero_padded(shape, sigma):
    # the (9, 14) image is narrower than the sigma-6 kernel (49 taps): the padding must keep its far side unread
    image = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255
    expected = GaussianFilter(spatial_dims=2, sigma=sigma)(image)
    out = gaussian_blur(image, sigma)
    assert out.shape == image.shape and out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-4 * 255, rtol=0)


def test_a_blurred_point_is_the_kernel_centred_on_it_and_cut_at_the_border():
    image = torch.zeros(1, 1, 21, 21)
    image[0, 0, 2, 10] = 1.0
    out = gaussian_blur(image, 2.0)[0, 0]
    assert out.argmax() == 2 * 21 + 10
    assert torch.allclose(out, out.flip(-1))  # symmetric about the point's column
    # the mass that would fall above row 0 is lost (zero outside the image), none wraps to the bottom rows
    assert float(out[-3:].abs().max()) < 1e-6
    assert 0.8 < float(out.sum()) < 0.95


def test_several_sigmas_from_one_call_equal_separate_calls():
    image = torch.rand(1, 1, 50, 45, generator=torch.Generator().manual_seed(1))
    fine, coarse = gaussian_blurs(image, (1.0, 6.0))
    assert torch.allclose(fine, gaussian_blur(image, 1.0), atol=1e-5)
    assert torch.allclose(coarse, gaussian_blur(image, 6.0), atol=1e-5)


def test_square_dilation_is_the_max_over_the_square_inside_the_image():
    torch.manual_seed(0)
    image = torch.rand(3, 40, 50) * 2 - 1
    expected = F.max_pool2d(image[:, None], 7, stride=1, padding=3)[:, 0]  # max_pool2d ignores the padding too
    assert torch.equal(square_dilation(image, 3), expected)
    mask = (torch.rand(1, 1, 40, 50) > 0.3).float()  # any leading dimensions; a 0/1 mask stays 0/1
    dilated = square_dilation(mask, 2)
    assert dilated.shape == mask.shape
    assert torch.equal(dilated, F.max_pool2d(mask, 5, stride=1, padding=2))
