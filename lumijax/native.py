"""Access to the compiled extension ``lumijax._native``.

Importing lumijax never requires the extension (the physics is pure JAX);
what needs it imports it through :func:`load`, which explains how to build
it when it is missing.
"""

from __future__ import annotations

from types import ModuleType


def load() -> ModuleType:
    """The extension module, or an ImportError that says how to build it."""
    try:
        from lumijax import _native
    except ImportError as err:
        raise ImportError(
            "lumijax._native is not built: run `make test` or `make demo` (or "
            "`maturin develop --release` inside the virtual environment)"
        ) from err
    return _native


def build_info() -> dict:
    """Version, run-time CPU features and thread count of the native kernels."""
    return load().build_info()
