"""Native CPU kernels for the hot ops of a decoding step (C + AVX2, built on first use)."""

from isvc.engine.kernels.build import KernelUnavailable, build, load
from isvc.engine.kernels.ops import NativeOps, TorchOps, ops_for

__all__ = ["KernelUnavailable", "NativeOps", "TorchOps", "build", "load", "ops_for"]
