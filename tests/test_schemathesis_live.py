"""schemathesis with every check and its stateful phase, against a live ``flowserve serve``.

Bounded for CI: a fixed seed, a few examples per operation and a time budget for the whole run
(the budget bounds how much is tried; no answer is judged by its speed). The V2 routes are left
to their own suite (tests/test_kserve_v2*.py). Any failure fails the test with schemathesis's
report, which holds a curl line to reproduce it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flowserve.service.settings import DEFAULT_MODEL_ROOT
from tests.live_server import live_server

ADMIN_KEY = "schemathesis-admin"


@pytest.mark.slow
def test_schemathesis_all_checks_and_stateful_find_nothing(tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        pytest.skip("schemathesis CLI not installed (dev extra)")
    env = {"FLOWSERVE_ADMIN_KEYS": ADMIN_KEY}
    with live_server(DEFAULT_MODEL_ROOT, env=env) as url:
        cmd = [
            st, "run", f"{url}/openapi.json",
            "--checks", "all",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", "8",
            "--seed", "1",
            "--generation-database", "none",
            "--workers", "1",
            "--exclude-path-regex", "^/v2",
            "--header", f"X-API-Key: {ADMIN_KEY}",
            "--no-color",
        ]  # fmt: skip
        run = subprocess.run(
            cmd,
            cwd=tmp_path,  # its report and cache stay out of the checkout
            capture_output=True,
            text=True,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
            # A guard against a hung run only (a quiet machine takes under a minute): coverage is
            # fixed by --max-examples and --seed, not by how fast the machine is.
            timeout=1800,
        )
    tail = run.stdout[-6000:]
    assert run.returncode == 0, f"schemathesis found failures:\n{tail}\n{run.stderr[-2000:]}"
    assert "No issues found" in run.stdout or " passed" in run.stdout, tail
