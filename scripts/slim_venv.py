"""Trim a serving virtual environment of what serving never loads (the Dockerfile's builder stage
runs it on /opt/venv-serve; docs/docker.md has the measurements).

Usage: python slim_venv.py VENV   (stdlib only; prints what it removed, by rule, in MB)

Removed:

* test suites (every ``tests/`` package; numpy's test-only extension modules);
* build-time files: C headers and sources, Cython sources, static libraries, ``*.pyi`` stubs,
  numpy's ``f2py``, ``distutils`` and PyInstaller hook, with their console scripts;
* the parts of ONNX Runtime that need onnx or torch, which the image lacks (``tools``,
  ``transformers``, ``quantization``), and ``libonnxruntime.so``, the C API library: the Python
  module links ONNX Runtime in statically and never opens it;
* ``.pyc`` files whose source is gone (Python never loads those);
* debug symbols, with ``strip --strip-debug``, from the shared objects that carry any (uvloop,
  PyYAML and httptools ship theirs), where binutils is installed.

Each ``.dist-info/RECORD`` is rewritten without the rows of removed files, so that
``importlib.metadata`` lists only files that exist.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["RULES", "debug_objects", "rewrite_records", "slim", "strip_debug"]

# What goes, by kind: glob patterns relative to site-packages ("bin/..." to the venv).
RULES: dict[str, tuple[str, ...]] = {
    "test suites": (
        "**/tests",
        "numpy/conftest.py",
        "numpy/_core/_*_tests.cpython-*.so",
    ),
    "headers, sources, static libraries, stubs": (
        "numpy/_core/include",
        "numpy/_core/lib",
        "**/*.h",
        "**/*.c",
        "**/*.pyx",
        "**/*.pxd",
        "**/*.pxi",
        "**/*.a",
        "**/*.pyi",
    ),
    "numpy build tools": (
        "numpy/f2py",
        "numpy/distutils",
        "numpy/_pyinstaller",
        "bin/f2py",
        "bin/numpy-config",
    ),
    "onnxruntime: onnx/torch tooling, C API library": (
        "onnxruntime/tools",
        "onnxruntime/transformers",
        "onnxruntime/quantization",
        "onnxruntime/capi/libonnxruntime.so*",
        "bin/onnxruntime_test",
    ),
}


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _remove(path: Path) -> int:
    """Delete a file or folder; the bytes it held."""
    size = _size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return size


def _matches(venv: Path, site: Path, patterns: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        base = venv if pattern.startswith("bin/") else site
        found.extend(base.glob(pattern))
    # Outermost first, so that a folder goes before anything inside it.
    return sorted(set(found), key=lambda p: len(p.parts))


def orphan_bytecode(site: Path) -> Iterator[Path]:
    """``__pycache__/<module>.<tag>.pyc`` files whose ``<module>.py`` is gone."""
    for pyc in site.rglob("__pycache__/*.pyc"):
        module = pyc.name.split(".", 1)[0]
        if not (pyc.parent.parent / f"{module}.py").exists():
            yield pyc


def debug_objects(site: Path) -> Iterator[Path]:
    """Shared objects that carry ``.debug_*`` sections (asks ``readelf``)."""
    for path in sorted(site.rglob("*.so*")):
        if not path.is_file() or path.is_symlink():
            continue
        sections = subprocess.run(
            ["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=False
        ).stdout
        if ".debug_" in sections:
            yield path


def strip_debug(site: Path) -> int:
    """``strip --strip-debug`` the shared objects that have debug sections; the bytes saved.

    Only those: rewriting an already stripped library gains nothing and could only harm the
    patched ELF files that auditwheel leaves.
    """
    saved = 0
    for path in debug_objects(site):
        before = path.stat().st_size
        subprocess.run(["strip", "--strip-debug", str(path)], check=True)
        saved += before - path.stat().st_size
    return saved


def rewrite_records(site: Path) -> int:
    """Drop the rows of files that no longer exist from every ``*.dist-info/RECORD``; the rows
    dropped."""
    dropped = 0
    for record in site.glob("*.dist-info/RECORD"):
        rows = list(csv.reader(io.StringIO(record.read_text())))
        kept = [row for row in rows if row and (site / row[0]).exists()]
        dropped += len(rows) - len(kept)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(kept)
        record.write_text(out.getvalue())
    return dropped


def slim(venv: Path) -> dict[str, int]:
    """Apply the rules, drop orphaned bytecode, strip debug symbols (where ``strip`` and
    ``readelf`` are installed) and rewrite the RECORDs; bytes removed by step."""
    (site,) = venv.glob("lib/python3*/site-packages")
    removed: dict[str, int] = {}
    for what, patterns in RULES.items():
        removed[what] = sum(_remove(p) for p in _matches(venv, site, patterns) if p.exists())
    removed["orphaned bytecode"] = sum(_remove(p) for p in list(orphan_bytecode(site)))
    if shutil.which("strip") and shutil.which("readelf"):
        removed["debug symbols"] = strip_debug(site)
    rewrite_records(site)
    return removed


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    total = 0
    for step, size in slim(Path(sys.argv[1])).items():
        print(f"{size / 1e6:7.1f} MB  {step}")
        total += size
    print(f"{total / 1e6:7.1f} MB  in all")
