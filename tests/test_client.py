"""The Python clients (sync and async) against a real ``flowserve serve`` process.

The server serves the closed-form affine test flow, so every number has an exact reference.
Retry and error-mapping details without a server are in tests/test_client_unit.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import flowserve_client as fc
from flowserve_client import AsyncFlowClient, FlowClient
from tests.live_server import free_port, live_server
from tests.service_fixtures import AffineFlow, affine_flow, build_affine_artifact

KEY = "client-test-key"
MAX_ROWS = 500


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AffineFlow]]:
    root = tmp_path_factory.mktemp("models")
    _, flow = build_affine_artifact(root, "sensors", 1, affine_flow(3, seed=11))
    build_affine_artifact(root, "sensors", 2, affine_flow(3, seed=12))
    build_affine_artifact(root, "other", 1, affine_flow(4, seed=13))
    env = {"FLOWSERVE_API_KEYS": KEY, "FLOWSERVE_MAX_ROWS": str(MAX_ROWS)}
    with live_server(root, env) as url:
        yield url, flow


@pytest.fixture
def client(server: tuple[str, AffineFlow]) -> Iterator[FlowClient]:
    with FlowClient(server[0], api_key=KEY, model="sensors", version=1, backoff=0.05) as c:
        yield c


def test_log_prob_json_and_npy_agree_with_the_closed_form(
    client: FlowClient, server: tuple[str, AffineFlow]
) -> None:
    flow = server[1]
    x = flow.sample(300, seed=1)
    client.binary_threshold = None
    by_json = client.log_prob(x)
    client.binary_threshold = 0
    by_npy = client.log_prob(x)
    np.testing.assert_allclose(by_json, flow.log_prob(x), rtol=1e-4, atol=1e-4)
    # JSON carries the shortest repr of each float32, .npy the float32 itself: equal as float32.
    np.testing.assert_array_equal(by_json.astype(np.float32), by_npy.astype(np.float32))


def test_score_json_and_npy_agree(client: FlowClient, server: tuple[str, AffineFlow]) -> None:
    x = server[1].sample(200, seed=2)
    x[::20] += 10.0
    client.binary_threshold = None
    by_json = client.score(x, fpr=0.02)
    client.binary_threshold = 0
    by_npy = client.score(x, fpr=0.02)
    for a, b in ((by_json.log_prob, by_npy.log_prob), (by_json.percentile, by_npy.percentile)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_array_equal(by_json.is_anomaly, by_npy.is_anomaly)
    assert by_json.is_anomaly[::20].all()
    assert (by_npy.model, by_npy.version) == (by_json.model, by_json.version) == ("sensors", 1)
    assert by_npy.fpr == by_json.fpr == 0.02
    assert by_npy.threshold == pytest.approx(by_json.threshold)
    np.testing.assert_array_equal(by_json.score, -by_json.log_prob)


def test_dataframe_in_three_lines(server: tuple[str, AffineFlow]) -> None:
    url, flow = server
    frame = pd.DataFrame(flow.sample(50, seed=3), columns=flow.feature_names)
    frame = frame[["f2", "f0", "f1"]].assign(id=range(50))
    # The README's example: extra columns are ignored, columns are matched by name.
    client = FlowClient(url, api_key=KEY, model="sensors", version=1)
    scores = client.score(frame).to_frame(index=frame.index)
    client.close()
    expected = flow.log_prob(frame[flow.feature_names].to_numpy())
    np.testing.assert_allclose(scores["log_prob"], expected, rtol=1e-4, atol=1e-4)
    assert list(scores.columns) == ["log_prob", "score", "percentile", "p_value", "is_anomaly"]


def test_encode_decode_round_trip_and_sample(
    client: FlowClient, server: tuple[str, AffineFlow]
) -> None:
    flow = server[1]
    x = flow.sample(40, seed=4)
    for threshold in (None, 0):
        client.binary_threshold = threshold
        z, log_det = client.encode(x)
        np.testing.assert_allclose(z, flow.encode(x), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(log_det, flow.log_det(), rtol=1e-4)
        np.testing.assert_allclose(client.decode(z), x, rtol=1e-4, atol=1e-4)
    a = client.sample(25, temperature=0.5, seed=7)
    b = client.sample(25, temperature=0.5, seed=7)
    assert a.shape == (25, 3)
    np.testing.assert_array_equal(a, b)


def test_metadata_health_ready(client: FlowClient) -> None:
    listing = client.models()
    assert listing["default"] == "sensors"
    assert {m["name"] for m in listing["models"]} == {"sensors", "other"}
    info = client.model_info("sensors")
    assert info["default_version"] == 2
    assert client.health() == {"status": "ok"}
    assert client.ready() is True
    assert client.feature_names() == ["f0", "f1", "f2"]


def test_default_model_and_newest_version(server: tuple[str, AffineFlow]) -> None:
    url, _ = server
    with FlowClient(url, api_key=KEY) as default:
        assert default.score(np.zeros((2, 3))).model == "sensors"
        assert default.score(np.zeros((2, 3))).version == 2
        assert default.feature_names() == ["f0", "f1", "f2"]


def test_typed_errors_carry_the_servers_code_and_message(
    client: FlowClient, server: tuple[str, AffineFlow]
) -> None:
    url, _ = server
    with pytest.raises(fc.InvalidInput) as wrong_width:
        client.log_prob(np.zeros((2, 5)))
    assert wrong_width.value.code == "invalid_input"
    assert wrong_width.value.status_code == 422
    assert "3" in wrong_width.value.message and "5" in wrong_width.value.message
    with pytest.raises(fc.InvalidInput) as nan:
        client.log_prob([[0.0, 1.0, 2.0], [np.nan, 0.0, 0.0]])
    assert "[1]" in nan.value.message
    with pytest.raises(fc.InvalidInput) as out_of_range:
        client.sample(1, temperature=50.0)
    assert out_of_range.value.code == "out_of_range"
    client.binary_threshold = None
    with pytest.raises(fc.PayloadTooLarge) as too_many:
        client.log_prob(np.zeros((MAX_ROWS + 1, 3)))
    assert too_many.value.code == "too_many_rows"
    with FlowClient(url, api_key=KEY, model="nope") as missing, pytest.raises(fc.ModelNotFound):
        missing.log_prob(np.zeros((1, 3)))
    gone = FlowClient(url, api_key=KEY, model="sensors", version=9)
    with gone, pytest.raises(fc.ModelNotFound) as no_version:
        gone.log_prob(np.zeros((1, 3)))
    assert no_version.value.code == "version_not_found"
    with FlowClient(url, api_key="wrong") as bad_key, pytest.raises(fc.Unauthorized) as denied:
        bad_key.sample(1)
    assert denied.value.code == "unauthorized"


def test_unreachable_server_raises_connection_failed_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = FlowClient(url, retries=2, backoff=0.01)
    with client, pytest.raises(fc.ConnectionFailed, match="after 3 attempts"):
        client.health()


async def _async_round(url: str, flow: AffineFlow) -> None:
    x = flow.sample(64, seed=5)
    async with AsyncFlowClient(url, api_key=KEY, model="sensors", version=1) as client:
        frame = pd.DataFrame(x, columns=flow.feature_names)
        lp, scores, (z, _), samples = await asyncio.gather(
            client.log_prob(x), client.score(frame), client.encode(x), client.sample(5, seed=1)
        )
        np.testing.assert_allclose(lp, flow.log_prob(x), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(scores.log_prob, lp, rtol=1e-6)
        np.testing.assert_allclose(await client.decode(z), x, rtol=1e-4, atol=1e-4)
        assert samples.shape == (5, 3)
        assert await client.ready() is True
        assert (await client.health())["status"] == "ok"
        assert (await client.models())["default"] == "sensors"
        assert (await client.model_info("other"))["name"] == "other"
        with pytest.raises(fc.InvalidInput):
            await client.log_prob(np.zeros((1, 2)))
        client.binary_threshold = 0
        by_npy = await client.log_prob(x)
        np.testing.assert_array_equal(by_npy.astype(np.float32), lp.astype(np.float32))


def test_async_client(server: tuple[str, AffineFlow]) -> None:
    asyncio.run(_async_round(*server))


def test_client_installs_standalone(tmp_path: Path) -> None:
    """clients/python is a distribution of its own, depending on httpx and numpy only."""
    import tomllib

    project = Path(__file__).resolve().parents[1] / "clients" / "python" / "pyproject.toml"
    meta = tomllib.loads(project.read_text())["project"]
    assert meta["name"] == "flowserve-client"
    assert sorted(d.split(">")[0].split("=")[0] for d in meta["dependencies"]) == [
        "httpx",
        "numpy",
    ]
