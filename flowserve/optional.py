"""Optional dependencies, probed without importing them.

torch is optional everywhere outside ``flowserve.models``: the service serves TorchScript and
``flowserve verify`` checks it only where torch can be imported.

Example:
    >>> isinstance(torch_available(), bool)
    True
"""

from __future__ import annotations

import importlib.util

__all__ = ["torch_available"]


def torch_available() -> bool:
    """Whether torch can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # ``sys.modules['torch'] = None`` raises ValueError
        return False
