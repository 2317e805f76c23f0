"""Every flow family, with tiny hyper-parameters, for the shared parametrized suites.

A new family gets every check in tests/test_flows.py (and the export parity suite) by adding a
line here. ``dim`` is filled in by each test.
"""

from __future__ import annotations

from typing import Any

# family -> tiny hyper-parameters (without dim)
VECTOR_FAMILIES: dict[str, dict[str, Any]] = {
    "planar": {"layers": 4},
    "radial": {"layers": 4},
    "nice": {"layers": 4, "hidden": 16},
    "realnvp": {"layers": 4, "hidden": 16},
    "glow": {"layers": 3, "hidden": 16},
    "maf": {"layers": 3, "hidden": 16},
    "iaf": {"layers": 3, "hidden": 16},
    "nsf": {"layers": 3, "hidden": 16, "bins": 6},
    "nsf_ar": {"layers": 2, "hidden": 16, "bins": 6},
    # exact trace in training too, so the suite's log-det checks are deterministic
    "ffjord": {"hidden": 16, "steps": 8, "estimator": "exact"},
}

# Families with an approximate log-det or numerical inverse can state looser tolerances here.
ROUNDTRIP_ATOL32: dict[str, float] = {}
# A fixed-step ODE solver integrates the trace along its path: close to, not exactly, the
# log-determinant of the discrete map.
LOGDET_ATOL: dict[str, float] = {"ffjord": 1e-5}
