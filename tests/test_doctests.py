"""Every docstring example in the library runs, as zuko's ``Example:`` sections do.

The modules are found by walking the four import packages, so a new module's examples are
collected without listing it here. Examples that need a running server or files that only exist
on a deployment say ``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

PACKAGES = ("flowserve", "flowserve.models", "flowserve.service", "flowserve_client")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules_with_examples() -> list[str]:
    """Dotted names of the modules whose source holds a ``>>>`` prompt (read, not imported:
    collection stays cheap, and importing is the test's job)."""
    names = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations is not None, package
        entries = [(package, Path(spec.origin or ""))]
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            if info.name == "__main__":  # importing it would run the CLI
                continue
            sub = importlib.util.find_spec(f"{package}.{info.name}")
            if sub is not None and sub.origin and not info.ispkg:
                entries.append((f"{package}.{info.name}", Path(sub.origin)))
        names += [name for name, path in entries if ">>>" in path.read_text(encoding="utf-8")]
    return sorted(names)


MODULES = _modules_with_examples()


def test_examples_are_found() -> None:
    # A broken walk would collect nothing and pass: the library has examples in every package.
    assert {name.split(".")[0] for name in MODULES} == {"flowserve", "flowserve_client"}
    assert any(name.startswith("flowserve.models.") for name in MODULES)
    assert any(name.startswith("flowserve.service.") for name in MODULES)


def _seed_generators(seed: int = 0) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(seed)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    mod = importlib.import_module(module)
    tests = [t for t in doctest.DocTestFinder().find(mod) if t.examples]
    assert tests, f"{module} has a '>>>' outside any docstring doctest finds"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in tests:
        # Each example draws from a freshly seeded generator: what it shows does not depend on
        # which tests ran before it in this worker (an unseeded spline example once drew an
        # ill-conditioned bin, derivative 2e-4, and its float32 round trip missed 1e-5).
        _seed_generators()
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
