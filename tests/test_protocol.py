"""The one table of error codes and the one list of score columns, and everything that reads them.

The server's error classes and framework codes, the client's exception mapping and the table in
docs/api.md all come from ``flowserve_client._protocol.ERROR_CODES``; the /score reply, the
client's ScoreResult, the bulk tables and ``flowserve score`` from its ``SCORE_COLUMNS``.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import flowserve_client as fc
from flowserve.service import bulk, errors, routes_predict
from flowserve_client import _exceptions, _protocol, cli
from flowserve_client._base import _parse_score
from flowserve_client._protocol import ERROR_CODES, SCORE_COLUMNS
from tests.service_fixtures import npy_bytes, npy_load

ROOT = Path(__file__).resolve().parents[1]
CODES = {e.code for e in ERROR_CODES}


def test_codes_are_unique_and_name_client_exceptions() -> None:
    assert len(CODES) == len(ERROR_CODES)
    for entry in ERROR_CODES:
        cls = getattr(fc, entry.exception)
        assert issubclass(cls, fc.FlowServeError), entry


def test_one_client_exception_per_status() -> None:
    # The client falls back on the status where a body has no code; that needs one class each.
    by_status: dict[int, set[str]] = {}
    for entry in ERROR_CODES:
        by_status.setdefault(entry.status, set()).add(entry.exception)
    assert {s: len(names) for s, names in by_status.items()} == dict.fromkeys(by_status, 1)


@pytest.mark.parametrize("entry", ERROR_CODES, ids=lambda e: e.code)
def test_client_raises_the_tables_exception(entry: _protocol.ErrorCode) -> None:
    body = {"error": {"code": entry.code, "message": "m", "field": "n"}}
    err = _exceptions.error_for_response(entry.status, body)
    assert type(err) is getattr(fc, entry.exception)
    assert (err.code, err.status_code, err.details) == (entry.code, entry.status, {"field": "n"})
    # Without a code (a V2 error body) the status alone picks the same class.
    assert type(_exceptions.error_for_response(entry.status, {"error": "m"})) is type(err)


def test_server_error_classes_take_their_status_from_the_table() -> None:
    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    raised = [c for c in classes if issubclass(c, errors.ApiError) and c is not errors.ApiError]
    assert len(raised) == 11
    for cls in raised:
        assert cls.status_code == _protocol.error_code(cls.code).status


def test_every_code_the_server_writes_is_in_the_table() -> None:
    # Codes written as literals (readiness, the handlers' fallbacks), besides the classes'.
    literal = re.compile(r"""(?:error_body|_count)\(\s*"(\w+)\"""")
    found = {
        code
        for path in (ROOT / "service").glob("*.py")
        for code in literal.findall(path.read_text())
    }
    assert found, "the pattern no longer matches the service's code"
    assert found <= CODES
    assert set(errors._FRAMEWORK_CODES.values()) <= CODES


def test_docs_table_is_written_from_the_table() -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "api_docs.py"))
    text = (ROOT / "docs" / "api.md").read_text()
    assert script["update"](text) == text, "run: python scripts/api_docs.py"
    for code in CODES:
        assert f"| `{code}` |" in text


def test_protocol_and_bulk_import_without_httpx() -> None:
    # The bulk scorer runs where only flowserve, onnxruntime and pandas are installed.
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "import flowserve_client._protocol, flowserve.service.bulk\n"
        "import flowserve_client\n"
        "assert isinstance(flowserve_client.FlowServeError, type)\n"
        "try:\n"
        "    flowserve_client.FlowClient\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('FlowClient imported without httpx')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_offline_columns_are_the_bulk_and_cli_columns() -> None:
    offline = [c.name for c in SCORE_COLUMNS if c.offline]
    assert bulk.SCORE_COLUMNS == cli.OUTPUT_COLUMNS == offline
    meta = bulk.score_meta(pd.DataFrame({"id": [1]}), keep=["id"])
    assert list(meta.columns) == ["id", *offline]


def test_score_reply_lists_the_http_columns_in_order(toy_client: TestClient) -> None:
    http = [c.name for c in SCORE_COLUMNS if c.http]
    rows = [[0.1, -0.2, 0.3], [2.0, 1.0, -3.0]]
    body = toy_client.post("/score", json={"inputs": rows, "fdr": 0.5}).json()
    assert [k for k in body if k in http] == http
    result = _parse_score(httpx.Response(200, json=body))
    frame = result.to_frame()
    assert list(frame.columns) == http
    # The binary reply holds any of them, in the order asked.
    asked = list(reversed(routes_predict._NPY_COLUMNS))
    reply = toy_client.post(
        "/score",
        params={"columns": ",".join(asked), "fdr": 0.5},
        content=npy_bytes(np.asarray(rows, dtype=np.float32)),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    assert reply.headers["x-flowserve-columns"] == ",".join(asked)
    table = npy_load(reply.content)
    for i, name in enumerate(asked):
        np.testing.assert_allclose(table[:, i], frame[name].to_numpy(dtype=np.float32), rtol=1e-6)


def test_endpoints_are_routed_under_every_prefix(toy_client: TestClient) -> None:
    spec = toy_client.get("/openapi.json").json()["paths"]
    for ep in routes_predict.ENDPOINTS:
        for prefix in ("", "/models/{name}", "/models/{name}/versions/{version}"):
            post = spec[f"{prefix}/{ep.name}"]["post"]
            query = {p["name"] for p in post.get("parameters", []) if p["in"] == "query"}
            assert query == set(ep.query)
            content = post["responses"]["200"]["content"]
            assert ("application/x-npy" in content) == ep.npy_reply
