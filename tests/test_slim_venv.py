"""scripts/slim_venv.py (the serving image's trim step) on a small fake environment: what serving
never loads goes, what it loads stays, and the RECORDs list only files that exist."""

from __future__ import annotations

import csv
import importlib.metadata
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLIM = runpy.run_path(str(ROOT / "scripts" / "slim_venv.py"))

REMOVED = (
    "numpy/_core/tests/test_umath.py",
    "numpy/_core/tests/__pycache__/test_umath.cpython-311.pyc",
    "numpy/_core/_umath_tests.cpython-311-x86_64-linux-gnu.so",
    "numpy/_core/include/numpy/ndarrayobject.h",
    "numpy/_core/lib/libnpymath.a",
    "numpy/__init__.pyi",
    "numpy/conftest.py",
    "numpy/__pycache__/conftest.cpython-311.pyc",
    "numpy/f2py/__init__.py",
    "onnxruntime/capi/libonnxruntime.so.1.32.0",
    "onnxruntime/transformers/optimizer.py",
    "onnxruntime/tools/__init__.py",
    "uvloop/loop.pyx",
    "../../../bin/f2py",
)
KEPT = (
    "numpy/__init__.py",
    "numpy/__pycache__/__init__.cpython-311.pyc",
    "numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
    "numpy/testing/__init__.py",
    "onnxruntime/__init__.py",
    "onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so",
    "onnxruntime/capi/libonnxruntime_providers_shared.so",
    "uvloop/loop.cpython-311-x86_64-linux-gnu.so",
    "fastapi_offline/static/swagger-ui-bundle.js",
    "../../../bin/flowserve",
)


def _fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    for name in REMOVED + KEPT:
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    info = site / "numpy-2.4.6.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 2.4.6\n")
    rows = [[name, "sha256=x", "10"] for name in REMOVED + KEPT]
    rows += [["numpy-2.4.6.dist-info/METADATA", "", ""], ["numpy-2.4.6.dist-info/RECORD", "", ""]]
    with (info / "RECORD").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return venv, site


def test_slim_removes_what_serving_never_loads(tmp_path: Path) -> None:
    venv, site = _fake_venv(tmp_path)
    removed = SLIM["slim"](venv)
    gone = [name for name in REMOVED if (site / name).exists()]
    assert gone == []
    assert [name for name in KEPT if not (site / name).exists()] == []
    assert removed["orphaned bytecode"] == 10  # conftest's .pyc, once its source went
    assert sum(removed.values()) >= 10 * len(REMOVED)


def test_records_list_only_existing_files(tmp_path: Path) -> None:
    venv, site = _fake_venv(tmp_path)
    SLIM["slim"](venv)
    dist = importlib.metadata.PathDistribution(site / "numpy-2.4.6.dist-info")
    files = dist.files or []
    assert dist.version == "2.4.6"
    assert all(Path(f.locate()).exists() for f in files)
    listed = {str(f) for f in files}
    assert set(KEPT) <= listed and not set(REMOVED) & listed
