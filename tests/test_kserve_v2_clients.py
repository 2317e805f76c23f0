"""The Open Inference Protocol as real clients speak it: tritonclient (HTTP) and the kserve client,
against a live ``flowserve serve`` on 127.0.0.1, with their default binary tensors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from flowserve.service.kserve_v2 import OUTPUTS
from tests.live_server import live_server
from tests.service_fixtures import AffineFlow, affine_flow, build_affine_artifact, corrupt_artifact

httpclient = pytest.importorskip("tritonclient.http")
triton_utils = pytest.importorskip("tritonclient.utils")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AffineFlow]]:
    root: Path = tmp_path_factory.mktemp("models")
    _, flow = build_affine_artifact(root, "toy", 1, affine_flow(3, seed=2))
    broken, _ = build_affine_artifact(root, "broken", 1, affine_flow(2, seed=5))
    corrupt_artifact(broken)
    with live_server(root, env={"FLOWSERVE_DEFAULT_MODEL": "toy"}) as url:
        yield url, flow


@pytest.fixture(scope="module")
def triton(server: tuple[str, AffineFlow]) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server[0].removeprefix("http://"))
    yield client
    client.close()


def _rows(flow: AffineFlow) -> np.ndarray:
    x = flow.sample(6, seed=4).astype(np.float32)
    x[2] += 9.0  # an outlier
    return x


def _triton_infer(
    client: httpclient.InferenceServerClient, x: np.ndarray, binary: bool, **kwargs: object
) -> httpclient.InferResult:
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = (
        None if binary else [httpclient.InferRequestedOutput(n, binary_data=False) for n in OUTPUTS]
    )
    return client.infer("toy", [tensor], outputs=outputs, **kwargs)


def test_triton_binary_tensors_equal_json_and_score(
    server: tuple[str, AffineFlow], triton: httpclient.InferenceServerClient
) -> None:
    url, flow = server
    x = _rows(flow)
    binary = _triton_infer(triton, x, binary=True, request_id="b-1")
    as_json = _triton_infer(triton, x, binary=False)
    assert binary.get_response()["id"] == "b-1"
    # Default tritonclient call: every output came back as raw bytes.
    assert all("binary_data_size" in o["parameters"] for o in binary.get_response()["outputs"])
    assert all("data" in o for o in as_json.get_response()["outputs"])
    for name in OUTPUTS:
        np.testing.assert_array_equal(binary.as_numpy(name), as_json.as_numpy(name))
    score = httpx.post(f"{url}/score", json={"inputs": x.tolist()}).json()
    np.testing.assert_allclose(binary.as_numpy("log_prob"), score["log_prob"], rtol=1e-6)
    np.testing.assert_allclose(binary.as_numpy("percentile"), score["percentile"], rtol=1e-9)
    assert binary.as_numpy("is_anomaly").tolist() == score["is_anomaly"]
    assert binary.as_numpy("is_anomaly")[2]
    assert binary.as_numpy("z").shape == (6, 3)
    np.testing.assert_allclose(binary.as_numpy("log_prob"), flow.log_prob(x), rtol=1e-4)


def test_triton_mixed_outputs_and_other_input_types(
    triton: httpclient.InferenceServerClient, server: tuple[str, AffineFlow]
) -> None:
    x = _rows(server[1])
    tensor = httpclient.InferInput("x", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x.astype(np.float64))  # binary FP64 input
    outputs = [
        httpclient.InferRequestedOutput("score", binary_data=True),
        httpclient.InferRequestedOutput("is_anomaly", binary_data=False),
    ]
    result = triton.infer("toy", [tensor], outputs=outputs, model_version="1")
    assert [o["name"] for o in result.get_response()["outputs"]] == ["score", "is_anomaly"]
    reference = _triton_infer(triton, x, binary=True)
    np.testing.assert_allclose(result.as_numpy("score"), reference.as_numpy("score"), rtol=1e-6)
    assert result.as_numpy("is_anomaly").tolist() == reference.as_numpy("is_anomaly").tolist()


def test_triton_errors_are_protocol_strings(triton: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("x", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(triton_utils.InferenceServerException) as wrong_width:
        triton.infer("toy", [tensor])
    assert wrong_width.value.status() == "422"
    assert "expected shape [N, 3]" in wrong_width.value.message()
    with pytest.raises(triton_utils.InferenceServerException) as missing:
        triton.get_model_metadata("nope")
    assert missing.value.status() == "404" and "nope" in missing.value.message()


def test_triton_metadata_config_statistics_and_index(
    triton: httpclient.InferenceServerClient, server: tuple[str, AffineFlow]
) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("toy") and not triton.is_model_ready("broken")
    meta = triton.get_server_metadata()
    assert set(meta["extensions"]) == {"binary_tensor_data", "model_configuration", "statistics"}
    config = triton.get_model_config("toy")
    assert config["name"] == "toy" and config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3]}]
    assert {o["name"]: o["data_type"] for o in config["output"]}["is_anomaly"] == "TYPE_BOOL"

    before = triton.get_inference_statistics("toy", "1")["model_stats"][0]
    _triton_infer(triton, _rows(server[1]), binary=True)
    after = triton.get_inference_statistics("toy", "1")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 6
    assert after["inference_stats"]["success"]["count"] == (
        before["inference_stats"]["success"]["count"] + 1
    )
    assert after["execution_count"] >= before["execution_count"] + 1
    assert after["last_inference"] >= before["last_inference"] > 0
    every = triton.get_inference_statistics()["model_stats"]
    assert [(s["name"], s["version"]) for s in every] == [("toy", "1")]

    index = {(m["name"], m["version"]): m for m in triton.get_model_repository_index()}
    assert index[("toy", "1")]["state"] == "READY"
    assert index[("broken", "1")]["state"] == "UNAVAILABLE"
    assert index[("broken", "1")]["reason"]


def test_kserve_client_binary_infer(server: tuple[str, AffineFlow]) -> None:
    kserve = pytest.importorskip("kserve")
    url, flow = server
    x = _rows(flow)

    async def call() -> object:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
        tensor = kserve.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        request = kserve.InferRequest("toy", [tensor], request_id="k-1")
        try:
            return await client.infer(url, request, model_name="toy")
        finally:
            await client.close()

    response = asyncio.run(call())
    got = {o.name: o.as_numpy() for o in response.outputs}  # type: ignore[attr-defined]
    assert list(got) == list(OUTPUTS)
    score = httpx.post(f"{url}/score", json={"inputs": x.tolist()}).json()
    np.testing.assert_allclose(got["log_prob"], score["log_prob"], rtol=1e-6)
    assert got["is_anomaly"].tolist() == score["is_anomaly"]
