"""lumijax: JAX-first differentiable photonics.

Simulate the matrix products of a photonic tensor core (microring weight
banks on a WDM grid) with its noise, crosstalk, thermal drift and low-bit
quantization, tune models and hardware knobs by gradient, and run the heavy
kernels natively.
"""

from importlib.metadata import PackageNotFoundError, version

from lumijax.hardware import HardwareConfig, photonic_matmul

try:
    __version__ = version("lumijax")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["HardwareConfig", "photonic_matmul", "__version__"]
