"""The README's curl examples, run against the bundled default model: they return what they say.

Each ``curl`` line in a README bash block becomes a request to the in-process app; a ``# {...}``
comment right after it is the documented answer, compared value by value (floats to 1e-3
relative) where the comment is complete JSON.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service_fixtures import service_client

README = Path(__file__).resolve().parents[1] / "README.md"


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> Iterator[tuple[list[str], str]]:
    """(curl argv, the comment lines that follow it) for every curl command in a block."""
    lines = block.replace("\\\n", " ").splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("curl "):
            continue
        comment = []
        for nxt in lines[i + 1 :]:
            if not nxt.startswith("# "):
                break
            comment.append(nxt[2:])
        for part in line.split("; "):
            yield shlex.split(part, comments=True), " ".join(comment)


def _examples() -> list[tuple[list[str], str]]:
    found = []
    for block in _bash_blocks(README.read_text()):
        for argv, comment in _commands(block):
            url = next(a for a in argv if a.startswith("localhost:8000"))
            if "--data-binary" not in argv:  # the .npy example needs a file made beforehand
                found.append((argv, comment))
            assert url
    return found


EXAMPLES = _examples()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with service_client() as c:
        yield c


def _close(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return all(_close(actual.get(k), v) for k, v in expected.items())
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(map(_close, actual, expected))
    if isinstance(expected, float):
        return bool(np.isclose(actual, expected, rtol=1e-3, atol=1e-3))
    return actual == expected


def test_readme_has_curl_examples_for_every_endpoint() -> None:
    paths = {next(a for a in argv if a.startswith("localhost")) for argv, _ in EXAMPLES}
    for endpoint in ("/log_prob", "/score", "/encode", "/decode", "/sample", "/models"):
        assert any(p.endswith(endpoint) for p in paths), endpoint


@pytest.mark.parametrize(("argv", "comment"), EXAMPLES, ids=lambda v: str(v)[:60])
def test_readme_curl_example(client: TestClient, argv: list[str], comment: str) -> None:
    url = next(a for a in argv if a.startswith("localhost:8000"))
    path = url.removeprefix("localhost:8000")
    body = argv[argv.index("-d") + 1] if "-d" in argv else None
    if body is None:
        r = client.get(path)
    else:
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    documented: Any = None
    if comment.startswith("{") and "…" not in comment:
        documented = json.loads(comment)
    if documented is not None and "error" in documented:
        assert r.status_code in (404, 413, 415, 422), r.text
        assert r.json()["error"]["code"] == documented["error"]["code"]
        return
    assert r.status_code == 200, r.text
    if documented is not None:
        assert _close(r.json(), documented), (r.json(), documented)
