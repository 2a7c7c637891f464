"""Classical baselines of the benchmark: elastix (itk-elastix) and SimpleITK, both with Mattes mutual information.

Each baseline registers one grey channel per image and returns a fide displacement field: (2, H, W) on the fixed
grid, pixels, nibabel array order (component 0 along array axis 0 = rows), fixed to moving, i.e. the moving image
sampled at ``p + disp(p)`` aligns with the fixed image at ``p``.

Conventions of the ITK side, and how they are undone here:

* Images get unit spacing, zero origin and identity direction, so ITK physical coordinates equal index coordinates.
* ITK index order is (x, y) = (column, row): the *reverse* of fide's array order. ``GetImageFromArray`` /
  ``image_view_from_array`` take a numpy (row, column) array, so array axis 0 becomes ITK's y. Dense fields come
  back as numpy (row, column, component) with components in (x, y) order; :func:`itk_field_to_disp` reverses them.
* elastix's TransformParameters and SimpleITK's registration result both map *fixed* physical points to *moving*
  physical points: the same direction as fide's fields, so no inversion is needed.

Grey channels (:func:`grey_channel`): SHG (1 channel) → ``log(1 + x)``; bright field against a 1-channel partner →
the eosin concentration of H&E colour deconvolution (``fide.preprocess.stain_channels``; collagen, the SHG signal,
is eosinophilic); bright field against bright field (HISTOLM) → inverted luminance ``255 - Y`` for both.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import tempfile
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from fide.preprocess import shg_log, stain_channels

__all__ = [
    "ELASTIX_MAPS",
    "elastix_available",
    "elastix_disp",
    "grey_channel",
    "itk_field_to_disp",
    "simpleitk_affine_disp",
]

logger = logging.getLogger(__name__)

# elastix default parameter map names per benchmark row (Mattes MI is the default metric of both)
ELASTIX_MAPS = {"affine": ("affine",), "bspline": ("affine", "bspline")}

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance weights of (R, G, B)


def elastix_available() -> str | None:
    """None when itk-elastix is installed, else a one-line reason (for the note column); imports nothing (itk ~30 s)."""
    if importlib.util.find_spec("itk") is None:
        return "itk-elastix not installed (pip install -r benchmarks/requirements.txt)"
    try:
        importlib.metadata.version("itk-elastix")
    except importlib.metadata.PackageNotFoundError:
        return "itk is installed without itk-elastix (pip install -r benchmarks/requirements.txt)"
    return None


def grey_channel(image: torch.Tensor, partner_channels: int) -> np.ndarray:
    """The single channel a baseline registers.

    Args:
        image: (C, H, W) raw image, C in {1, 3}, uint8 range (SHG counts or bright-field RGB).
        partner_channels: channel count of the other image of the pair (1 or 3).

    Returns:
        (H, W) float32: ``log(1 + x)`` for C = 1; eosin optical density when C = 3 and the partner has 1 channel;
        inverted luminance ``255 - Y`` when both have 3 channels.
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (C, H, W) with C in {{1, 3}}, got {tuple(image.shape)}")
    if partner_channels not in (1, 3):
        raise ValueError(f"partner_channels must be 1 or 3, got {partner_channels}")
    if image.shape[0] == 1:
        grey = shg_log(image[None])[0, 0]
    elif partner_channels == 1:
        grey = stain_channels(image[None])[0, 1]  # (haematoxylin, eosin, residual): eosin
    else:
        grey = 255.0 - torch.einsum("c,chw->hw", image.new_tensor(_LUMA), image)
    return np.ascontiguousarray(grey.numpy(), dtype=np.float32)


def itk_field_to_disp(field: np.ndarray) -> np.ndarray:
    """ITK dense field as numpy, (H, W, 2) with vector components (x, y) = (column, row), to fide's (2, H, W).

    Returns:
        (2, H, W) float32, component 0 along array axis 0 (rows), component 1 along array axis 1 (columns).
    """
    if field.ndim != 3 or field.shape[-1] != 2:
        raise ValueError(f"field must have shape (H, W, 2), got {field.shape}")
    # ITK (x, y) order -> fide array order (axis 0 = row = y, axis 1 = column = x)
    return np.ascontiguousarray(np.moveaxis(field[..., ::-1], -1, 0), dtype=np.float32)


def _check_grey(name: str, image: np.ndarray) -> None:
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) grey image, got shape {image.shape}")


def elastix_disp(fixed: np.ndarray, moving: np.ndarray, maps: Sequence[str] = ("affine",)) -> np.ndarray:
    """Register with elastix's default parameter maps and return the dense field on the fixed grid.

    Args:
        fixed: (H, W) grey fixed image.
        moving: (Hm, Wm) grey moving image.
        maps: names for ``itk.ParameterObject.GetDefaultParameterMap``, run in sequence (e.g. "affine", "bspline").

    Returns:
        (2, H, W) float32 displacement, pixels, array order, fixed to moving.
    """
    import itk  # benchmark-only dependency, imported here so the module loads without it

    _check_grey("fixed", fixed)
    _check_grey("moving", moving)
    # image_view_from_array: unit spacing, zero origin, identity direction; ITK index (x, y) = (column, row)
    fixed_itk = itk.image_view_from_array(np.ascontiguousarray(fixed, dtype=np.float32))
    moving_itk = itk.image_view_from_array(np.ascontiguousarray(moving, dtype=np.float32))
    parameters = itk.ParameterObject.New()
    for name in maps:
        parameter_map = parameters.GetDefaultParameterMap(name)
        parameter_map["WriteResultImage"] = ["false"]  # only the transform is used
        parameters.AddParameterMap(parameter_map)
    _, transform = itk.elastix_registration_method(
        fixed_itk, moving_itk, parameter_object=parameters, log_to_console=False
    )
    # the field lives on the fixed grid recorded in the transform parameters (Size/Spacing/Origin of the fixed image);
    # transformix also writes it as deformationField.nii into its output directory (the working directory by default)
    with tempfile.TemporaryDirectory(prefix="transformix-") as scratch:
        transformix = itk.TransformixFilter.New(moving_image=moving_itk, transform_parameter_object=transform)
        transformix.SetComputeDeformationField(True)
        transformix.SetOutputDirectory(scratch)
        transformix.SetLogToConsole(False)
        transformix.UpdateLargestPossibleRegion()
        disp = itk_field_to_disp(np.asarray(itk.array_from_image(transformix.GetOutputDeformationField())))
    if disp.shape[1:] != fixed.shape:
        raise RuntimeError(f"elastix returned a field of shape {disp.shape[1:]}, expected the fixed grid {fixed.shape}")
    return disp


def simpleitk_affine_disp(fixed: np.ndarray, moving: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """SimpleITK affine registration with Mattes MI, three resolution levels, geometric-centre initialisation.

    Follows the SimpleITK registration examples: ``AffineTransform(2)`` initialised by
    ``CenteredTransformInitializer`` (GEOMETRY), Mattes MI with 50 bins on a 20 % random sample, regular-step gradient
    descent (largest step 1 px, at most 200 iterations per level) with physical-shift scales, shrink factors 4, 2, 1
    with smoothing sigmas 2, 1, 0 pixels.

    Args:
        fixed: (H, W) grey fixed image.
        moving: (Hm, Wm) grey moving image.
        seed: sampling seed (runs are reproducible).

    Returns:
        (2, H, W) float32 displacement, pixels, array order, fixed to moving.
    """
    _check_grey("fixed", fixed)
    _check_grey("moving", moving)
    # GetImageFromArray: unit spacing, zero origin, identity direction; index (x, y) = (column, row)
    fixed_sitk = sitk.GetImageFromArray(np.ascontiguousarray(fixed, dtype=np.float32))
    moving_sitk = sitk.GetImageFromArray(np.ascontiguousarray(moving, dtype=np.float32))
    initial = sitk.CenteredTransformInitializer(
        fixed_sitk, moving_sitk, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed)
    method.SetInterpolator(sitk.sitkLinear)
    # plain gradient descent's convergence window stops after ~10 iterations per level here, a few pixels short
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=200, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrinkFactors=[4, 2, 1])
    method.SetSmoothingSigmasPerLevel(smoothingSigmas=[2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(fixed_sitk, moving_sitk)  # maps fixed physical points to moving physical points
    logger.debug("simpleitk: %s", method.GetOptimizerStopConditionDescription())
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        fixed_sitk.GetSize(),
        fixed_sitk.GetOrigin(),
        fixed_sitk.GetSpacing(),
        fixed_sitk.GetDirection(),
    )
    return itk_field_to_disp(sitk.GetArrayFromImage(field))
