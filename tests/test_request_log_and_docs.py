"""Request IDs (X-Request-ID in and out), access-log lines, JSON logs, and /docs and /redoc that
load nothing from outside the server."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flowserve.service.request_log import ACCESS_LOGGER, JsonFormatter
from tests.service_fixtures import AffineFlow, service_client


def test_request_id_is_echoed_or_assigned(toy_client: TestClient) -> None:
    given = toy_client.post(
        "/log_prob", json={"inputs": [[1, 2, 3]]}, headers={"X-Request-ID": "job-7:row.1"}
    )
    assert given.status_code == 200 and given.headers["x-request-id"] == "job-7:row.1"
    made = toy_client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert toy_client.get("/healthz").headers["x-request-id"] != made.headers["x-request-id"]
    # Unsafe for a log line (spaces, quotes, over 128 chars): replaced, not echoed.
    for bad in ('a b"c', "x" * 129):
        r = toy_client.get("/healthz", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    # Errors carry it too, in both error shapes.
    error = toy_client.post("/log_prob", json={"inputs": [[1]]}, headers={"X-Request-ID": "e1"})
    assert error.status_code == 422 and error.headers["x-request-id"] == "e1"
    v2 = toy_client.get("/v2/models/nope", headers={"X-Request-ID": "e2"})
    assert v2.status_code == 404 and v2.headers["x-request-id"] == "e2"


def test_one_access_line_per_request(
    toy_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        toy_client.post("/log_prob", json={"inputs": [[1, 2, 3]]}, headers={"X-Request-ID": "a-1"})
        toy_client.post("/log_prob", json={"inputs": [[1]]}, headers={"X-Request-ID": "a-2"})
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(records) == 2
    ok, bad = (r.access for r in records)  # type: ignore[attr-defined]
    assert (ok["method"], ok["path"], ok["status"], ok["request_id"]) == (
        "POST",
        "/log_prob",
        200,
        "a-1",
    )
    assert (bad["status"], bad["request_id"]) == (422, "a-2")
    assert ok["duration_ms"] >= 0
    assert '"POST /log_prob" 200' in records[0].getMessage() and "id=a-1" in records[0].getMessage()
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["logger"] == ACCESS_LOGGER and line["request_id"] == "a-1"
    assert line["status"] == 200 and line["level"] == "info"


def test_access_log_can_be_turned_off(
    toy_repo: tuple[Path, AffineFlow], caplog: pytest.LogCaptureFixture
) -> None:
    quiet_client = service_client(toy_repo[0], access_log=False)
    with quiet_client as quiet, caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        r = quiet.get("/healthz", headers={"X-Request-ID": "q"})
    assert r.headers["x-request-id"] == "q"  # IDs are still echoed
    assert not [rec for rec in caplog.records if rec.name == ACCESS_LOGGER]


@pytest.mark.parametrize(
    ("page", "asset"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]
)
def test_docs_pages_load_only_local_assets(toy_client: TestClient, page: str, asset: str) -> None:
    html = toy_client.get(page)
    assert html.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    urls += re.findall(r"url: '([^']+)'", html.text)
    assert urls and all(u.startswith("/") for u in urls), urls  # nothing from another host
    assert f"/docs-assets/{asset}" in urls
    for url in urls:
        r = toy_client.get(url)
        assert r.status_code == 200 and len(r.content) > 100, url
    assert "fonts.googleapis" not in html.text
