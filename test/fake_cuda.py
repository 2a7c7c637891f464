"""A CPU stand-in for CUDA that fails where real CUDA would fail on a device mix-up (CI has no GPU).

Inside :class:`FakeCuda`, tensors sent to ``"cuda"`` stay on the CPU but are tagged; the tag follows every result
computed from a tagged tensor, and ``.device`` / ``.is_cuda`` report CUDA for tagged tensors. An operation that
mixes a tagged tensor with an untagged one of one or more dimensions raises, as CUDA does ("Expected all tensors to
be on the same device"); so do ``.numpy()`` of a tagged tensor and a CPU generator drawing CUDA numbers. 0-dim CPU
tensors, CPU index tensors and cross-device copies are allowed, as on CUDA. Numbers are unchanged: this checks
device placement only, never speed or CUDA kernels.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["FakeCuda", "is_fake_cuda", "without_gpu"]

_TAG = "_fake_cuda"
_CPU = torch.device("cpu")
_CUDA = torch.device("cuda", 0)
# legal with operands on two devices in real PyTorch
_CROSS_DEVICE_OK = {
    *("to", "cpu", "cuda", "copy_", "__getitem__", "__setitem__", "index_put_", "__set__"),
    "_has_compatible_shallow_copy_type",  # Module.to asks before moving parameters
}


# where a real GPU exists, the real CUDA tests run instead (and libraries that query CUDA would see through the fake)
without_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU is present: the CUDA tests run")


def is_fake_cuda(tensor: torch.Tensor) -> bool:
    return getattr(tensor, _TAG, False)


def _tag(value, on: bool):
    """Tag every tensor in ``value`` (tensors, and tuples / lists of them, named ``torch.return_types`` too)."""
    if isinstance(value, torch.Tensor):
        setattr(value, _TAG, on)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _tag(item, on)
    return value


def _is_cuda(device) -> bool:
    if isinstance(device, torch.Tensor):
        return is_fake_cuda(device)
    return device is not None and torch.device(device).type == "cuda"


def _name(func) -> str:
    return getattr(func, "__name__", "")


class FakeCuda(TorchFunctionMode):
    """Context manager: see the module docstring."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)
        owner = getattr(func, "__self__", None)
        if name == "__get__" and owner in (torch.Tensor.device, torch.Tensor.is_cuda):
            tagged = is_fake_cuda(args[0])
            if owner is torch.Tensor.is_cuda:
                return tagged
            return _CUDA if tagged else func(*args, **kwargs)
        if name == "__set__" and owner is torch.Tensor.data:  # Module.to: ``param.data = param.to(device)``
            func(*args, **kwargs)
            return _tag(args[0], is_fake_cuda(args[1]))
        if name == "numpy" or name == "__array__":
            if is_fake_cuda(args[0]):
                raise TypeError("can't convert cuda:0 device type tensor to numpy (fake CUDA)")
            return func(*args, **kwargs)

        target = None  # the device this call asks for explicitly, if any
        if "device" in kwargs:
            target = kwargs["device"]
            kwargs["device"] = _CPU if _is_cuda(target) else target
        if name in ("to", "cuda", "cpu"):
            args, target = self._strip_to(name, args, kwargs, target)

        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        tagged = [is_fake_cuda(t) for t in tensors]
        if any(tagged) and name not in _CROSS_DEVICE_OK:
            stray = [tuple(t.shape) for t, on in zip(tensors, tagged) if not on and t.dim() > 0]
            if stray:
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
                    f"(fake CUDA: {getattr(func, '__qualname__', func)} got CPU tensors of shapes {stray})"
                )
        generator = kwargs.get("generator")
        if generator is not None and _is_cuda(target) and generator.device.type != "cuda":
            raise RuntimeError("Expected a 'cuda' device type for generator (fake CUDA)")

        out = func(*args, **kwargs)
        if target is not None and not isinstance(target, torch.dtype):
            on = _is_cuda(target)
            if args and out is args[0] and on != is_fake_cuda(out):  # .to() / .cpu() return self when nothing moves
                out = out.view(out.shape)
        elif name in _CROSS_DEVICE_OK and name not in ("to", "cpu", "cuda", "__getitem__"):
            return out  # in-place writes keep their destination's tag
        else:
            on = bool(tensors) and (is_fake_cuda(tensors[0]) if name in ("to", "__getitem__") else any(tagged))
        return _tag(out, on)

    @staticmethod
    def _strip_to(name, args, kwargs, target):
        """``.to(...)``, ``.cuda()``, ``.cpu()``: run on the CPU, remember where the tensor was sent."""
        if name == "cuda":
            return args[:1], _CUDA
        if name == "cpu":
            return args, _CPU
        rest = []
        for value in args[1:]:
            if isinstance(value, torch.Tensor):  # .to(other): other's device and dtype
                target = value
                rest.append(value.dtype)
            elif isinstance(value, (str, torch.device)):
                target = value
                rest.append(_CPU if _is_cuda(value) else value)
            else:
                rest.append(value)
        return (args[0], *rest), target
