"""Loads the compiled module fastconv._C and says clearly what is missing when it cannot."""
import torch

_REBUILD = "rebuild it with `pip install --no-build-isolation -e .` (or `make build`) in the fastconv source tree"

try:
    from . import _C  # noqa: F401  (importing runs the C++ operator registrations)
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the module
    raise ImportError(
        f"fastconv's compiled kernels (fastconv._C) could not be loaded ({exc}); {_REBUILD}."
    ) from exc

try:
    from ._build_config import CUDA_ARCHS, WITH_CUDA
except ImportError:  # an old build without the generated config
    WITH_CUDA, CUDA_ARCHS = False, ""


def build_info():
    """What the compiled module contains: {'cuda': bool, 'cuda_archs': str, 'cpu_isa': str}."""
    fields = dict(item.split("=", 1) for item in torch.ops.fastconv.build_info().split(";") if item)
    return {"cuda": fields.get("cuda") == "1", "cuda_archs": CUDA_ARCHS, "cpu_isa": fields.get("cpu_isa", "")}


# Read once: a build does not change while it is loaded, and torch.compile cannot trace an operator that
# returns a string, so the per-call check below must only read a Python constant.
HAS_CUDA_KERNELS = build_info()["cuda"]


def check_device_supported(op, tensor):
    """A CUDA tensor on a build without CUDA kernels gets one clear sentence, not a dispatcher trace."""
    if tensor.is_cpu:  # the common case, without building a device object
        return
    if tensor.device.type == "cuda" and not HAS_CUDA_KERNELS:
        raise RuntimeError(
            f"fastconv.{op}: this build of fastconv has no CUDA kernels (it was compiled without nvcc or with "
            f"FASTCONV_CUDA=0); {_REBUILD} on a machine with the CUDA toolkit, with FASTCONV_CUDA=1."
        )
    if tensor.device.type not in ("cpu", "cuda", "meta"):
        raise RuntimeError(f"fastconv.{op}: tensors on {tensor.device.type} are not supported (CPU and CUDA only)")
