"""Gaussian smoothing of whole images (MONAI's discrete kernels, applied by FFT) and a square max filter.

MONAI's ``GaussianFilter`` convolves in space; on 834 px images on 2 CPU cores that took 45-55 ms per filter
whatever the sigma (1 to 6 px), the FFT 6-12 ms for the same result to 1e-6 (measured for issue 13). The fibre
texture, the SHG footprint and the collagen patches smooth full-resolution images several times a pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d

__all__ = ["gaussian_blur", "gaussian_blurs", "layout_blur", "smooth_fft_length", "square_dilation"]

_TRUNCATED = 4.0  # MONAI GaussianFilter's default: the kernel reaches 4 sigma


def smooth_fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n >= 1 (pocketfft is several times slower on lengths with a large prime factor)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _kernel_spectrum(kernel: torch.Tensor, length: int, real_half: bool) -> torch.Tensor:
    """Spectrum of a centred 1-D kernel placed circularly on ``length`` samples (its centre at index 0)."""
    radius = (len(kernel) - 1) // 2
    circular = kernel.new_zeros(length)
    circular[: radius + 1] = kernel[radius:]
    if radius:
        circular[-radius:] = kernel[:radius]
    return torch.fft.rfft(circular) if real_half else torch.fft.fft(circular)


def gaussian_blurs(image: torch.Tensor, sigmas: Sequence[float]) -> list[torch.Tensor]:
    """``image`` (N, C, H, W) smoothed by each of ``sigmas`` (pixels), zero outside the image as MONAI's
    ``GaussianFilter`` (same kernels: ``gaussian_1d``, "erf", truncated at 4 sigma); one forward FFT for all.

    Returns:
        One float32 (N, C, H, W) tensor per sigma.
    """
    image = image.float()
    height, width = image.shape[-2:]
    kernels = [gaussian_1d(torch.tensor(float(s)), truncated=_TRUNCATED).to(image) for s in sigmas]
    radius = max((len(k) - 1) // 2 for k in kernels)
    # zero padding by the kernel's radius: the circular convolution then reads only zeros beyond the image
    rows = smooth_fft_length(max(height + radius, 2 * radius + 1))
    cols = smooth_fft_length(max(width + radius, 2 * radius + 1))
    spectrum = torch.fft.rfft2(image, s=(rows, cols))
    out = []
    for kernel in kernels:
        transfer = _kernel_spectrum(kernel, rows, False)[:, None] * _kernel_spectrum(kernel, cols, True)[None, :]
        out.append(torch.fft.irfft2(spectrum * transfer, s=(rows, cols))[..., :height, :width].contiguous())
    return out


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image`` (N, C, H, W) smoothed by a Gaussian of ``sigma`` pixels (see :func:`gaussian_blurs`)."""
    return gaussian_blurs(image, [sigma])[0]


def layout_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`gaussian_blur` with the border replicated instead of zero: an image's edge (white bright-field
    background) must not darken into fake structure. ``image`` (N, C, H, W) → same shape; ``sigma`` <= 0: unchanged."""
    if sigma <= 0:
        return image
    reach = int(_TRUNCATED * sigma) + 1
    padded = torch.nn.functional.pad(image.float(), (reach, reach, reach, reach), mode="replicate")
    return gaussian_blur(padded, sigma)[..., reach:-reach, reach:-reach]


def square_dilation(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level dilation of (..., H, W) by a (2r+1)^2 square (pixels beyond the border ignored), separably, one
    ``torch.maximum`` per offset: torch's ``max_pool2d`` took ~10x longer on CPU (71 against 6 ms at 834 px, r=20)."""
    for dim in (-2, -1):
        padded = F.pad(image, (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius), value=-math.inf)
        length = image.shape[dim]
        image = padded.narrow(dim, 0, length).clone()
        for k in range(1, 2 * radius + 1):
            torch.maximum(image, padded.narrow(dim, k, length), out=image)
    return image
