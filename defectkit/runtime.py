"""Where networks run: device selection and the per-device settings that go with it.

``runtime.device`` in a config is ``"auto"`` (the default: CUDA when a GPU is visible, else the
CPU), ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` for another GPU). On CUDA, training uses mixed precision
(bf16 where the GPU supports it, else fp16 with loss scaling) and prediction runs under autocast;
on the CPU everything stays fp32 and convolutional networks use the channels-last memory layout,
which measured 1.3-1.7x faster for the EfficientNet-Lite0 U-Net on two AVX2 cores.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from defectkit.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""What ``runtime.device`` accepts (``"cuda:N"`` too)."""


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_allocator_tuned = False


def keep_freed_memory(trim_bytes: int = 1 << 30, mmap_bytes: int = 64 << 20) -> bool:
    """Let glibc's allocator keep freed memory for reuse instead of returning it to the system at once.

    CPU tensors of a few MB to tens of MB are allocated and freed on every step (each L-BFGS
    evaluation of the texture gate's pixel head allocates its 80,000-row activations anew). With
    glibc's defaults the freed top of the heap goes back to the kernel, and the next allocation
    faults every page in again: the built-in texture quickstart took 4.7 million page faults and 15 s
    of system time. Keeping up to ``trim_bytes`` of free heap and serving blocks under
    ``mmap_bytes`` from the heap cut that to 2.3 million faults and 9 s, and the run from 79 to 74 s
    (docs/performance.md), for the same outputs. This is what PyTorch's CPU tuning guide gets from jemalloc or tcmalloc,
    without a preloaded library. Applied once per process; a no-op (False) where the C library is
    not glibc.

    Returns:
        Whether the settings are in effect.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        # mallopt returns 1 on success; its value argument is a C int.
        _allocator_tuned = bool(libc.mallopt(_M_TRIM_THRESHOLD, min(int(trim_bytes), 2**31 - 1))) and bool(
            libc.mallopt(_M_MMAP_THRESHOLD, min(int(mmap_bytes), 2**31 - 1))
        )
    except (OSError, AttributeError):
        return False
    return _allocator_tuned


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a ``runtime.device`` value.

    Raises:
        ConfigError: An unknown value, or CUDA asked for on a machine without a visible GPU.
    """
    if isinstance(spec, torch.device):
        return spec
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"runtime.device={spec!r} but no CUDA GPU is visible; use 'auto' or 'cpu'")
        try:
            return torch.device(text)
        except RuntimeError as exc:
            raise ConfigError(f"runtime.device={spec!r} is not a valid device: {exc}") from exc
    raise ConfigError(f"runtime.device must be one of {list(DEVICE_CHOICES)} (or 'cuda:N'), got {spec!r}")


def training_precision(device: torch.device) -> str:
    """Lightning's ``precision`` for training on ``device``: mixed on CUDA, fp32 on the CPU."""
    if device.type != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def lightning_accelerator(device: torch.device) -> tuple[str, list[int] | int]:
    """Lightning's ``(accelerator, devices)`` for ``device``."""
    if device.type == "cuda":
        return "gpu", [device.index or 0]
    return "cpu", 1


def memory_format(device: torch.device) -> torch.memory_format:
    """The memory layout convolutional networks run fastest in on ``device`` (channels-last on both here)."""
    return torch.channels_last


@contextlib.contextmanager
def inference_mode(device: torch.device) -> Iterator[None]:
    """No gradients; autocast to half precision on CUDA (bf16 where supported), plain fp32 on the CPU."""
    with torch.inference_mode():
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                yield
        else:
            yield


__all__ = [
    "DEVICE_CHOICES", "inference_mode", "keep_freed_memory", "lightning_accelerator", "memory_format", "resolve_device",
    "training_precision",
]
