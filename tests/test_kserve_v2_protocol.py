"""Open Inference Protocol details, in process: declared datatypes honoured, the binary tensor
extension's framing and its errors, V2-shaped errors on every /v2 path, and the OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service_fixtures import AffineFlow, service_client

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def setup(
    toy_client: TestClient, toy_repo: tuple[Path, AffineFlow]
) -> tuple[TestClient, AffineFlow]:
    return toy_client, toy_repo[1]


def _tensor(datatype: str, data: list, shape: list[int] | None = None) -> dict:
    return {"inputs": [{"name": "x", "shape": shape or [1, 3], "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("FP32", ["0.1", "0.2", "0.3"], "must be numbers, got strings"),
        ("FP32", [True, 1.0, 2.0], "not booleans"),
        ("FP64", [[1.0, False, 2.0]], "not booleans"),
        ("INT32", [1.5, 2, 3], "must be integers, got fractional numbers"),
        ("INT8", [1, 2, 300], "must lie in [-128, 127]"),
        ("UINT8", [1, -2, 3], "must lie in [0, 255]"),
        ("BOOL", [True, False, True], "datatype 'BOOL'"),
        ("FP32", [{"a": 1}, 2, 3], "must be numbers"),
        ("FP32", [[1, 2], [3]], "(nested) list of numbers"),
        ("FP32", "1,2,3", "'data' must be a list"),
    ],
)
def test_the_declared_datatype_is_honoured(
    setup: tuple[TestClient, AffineFlow], datatype: str, data: object, fragment: str
) -> None:
    client, _ = setup
    r = client.post("/v2/models/toy/infer", json=_tensor(datatype, data))  # type: ignore[arg-type]
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]


def test_integer_and_half_types_score_like_fp32(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    ref = client.post("/v2/models/toy/infer", json=_tensor("FP32", [1, 2, 3])).json()
    for datatype in ("INT64", "UINT16", "FP16"):
        got = client.post("/v2/models/toy/infer", json=_tensor(datatype, [1, 2, 3])).json()
        assert got["outputs"][0] == ref["outputs"][0], datatype


def _binary_request(x: np.ndarray, datatype: str = "FP32", **params: object) -> tuple[bytes, int]:
    raw = x.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw), **params},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head + raw, len(head)


def _split(content: bytes, header_length: int) -> tuple[dict, bytes]:
    return json.loads(content[:header_length]), content[header_length:]


def test_binary_in_and_out_is_framed_like_triton(setup: tuple[TestClient, AffineFlow]) -> None:
    client, flow = setup
    x = flow.sample(4, seed=1).astype("<f4")
    body, n = _binary_request(x)
    r = client.post("/v2/models/toy/infer", content=body, headers={HEADER: str(n)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    head, raw = _split(r.content, int(r.headers[HEADER]))
    offset, got = 0, {}
    sizes = {"FP32": 4, "FP64": 8, "BOOL": 1}
    for out in head["outputs"]:
        size = out["parameters"]["binary_data_size"]
        assert size == sizes[out["datatype"]] * int(np.prod(out["shape"]))
        dtype = {"FP32": "<f4", "FP64": "<f8", "BOOL": "?"}[out["datatype"]]
        got[out["name"]] = np.frombuffer(raw[offset : offset + size], dtype=dtype)
        offset += size
    assert offset == len(raw)
    np.testing.assert_allclose(got["log_prob"], flow.log_prob(x), rtol=1e-4)
    np.testing.assert_allclose(got["z"].reshape(4, 3), flow.encode(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda body, n: (body[:-4], n), "binary bytes after the JSON header, 48 announced"),
        (lambda body, n: (body, len(body) + 1), HEADER),
        (lambda body, n: (body, 0), HEADER),
        (lambda body, n: (body, "ten"), HEADER),
        (lambda body, n: (body, n - 1), "not valid JSON"),
    ],
)
def test_binary_framing_errors_are_clear_4xx(
    setup: tuple[TestClient, AffineFlow], mutate: object, fragment: str
) -> None:
    client, _ = setup
    body, n = mutate(*_binary_request(np.zeros((4, 3), dtype="<f4")))  # type: ignore[operator]
    r = client.post("/v2/models/toy/infer", content=body, headers={HEADER: str(n)})
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]


def test_binary_size_must_match_the_shape(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    body, n = _binary_request(np.zeros((4, 3), dtype="<f8"), datatype="FP32")
    r = client.post("/v2/models/toy/infer", content=body, headers={HEADER: str(n)})
    assert r.status_code == 422
    assert "is 48 bytes, binary_data_size says 96" in r.json()["error"]


def test_every_v2_path_answers_v2_errors(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    unknown = client.get("/v2/no/such/thing")
    assert unknown.status_code == 404 and isinstance(unknown.json()["error"], str)
    wrong_method = client.get("/v2/models/toy/infer")
    assert wrong_method.status_code == 405 and "GET" in wrong_method.json()["error"]
    no_model = client.get("/v2/models/nope/config")
    assert no_model.status_code == 404 and "nope" in no_model.json()["error"]
    no_stats = client.get("/v2/models/nope/stats")
    assert no_stats.status_code == 404 and isinstance(no_stats.json()["error"], str)
    bad_index = client.post("/v2/repository/index", json={"ready": "yes"})
    assert bad_index.status_code == 422 and "true or false" in bad_index.json()["error"]
    # Outside /v2 the service's own error shape is unchanged.
    assert client.get("/nope").json()["error"]["code"] == "not_found"


def test_output_binary_flags_must_be_booleans(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    body = _tensor("FP32", [1, 2, 3])
    body["outputs"] = [{"name": "score", "parameters": {"binary_data": "yes"}}]
    r = client.post("/v2/models/toy/infer", json=body)
    assert r.status_code == 422 and "binary_data" in r.json()["error"]


def test_openapi_documents_the_v2_bodies(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    spec = client.get("/openapi.json").json()
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    content = infer["requestBody"]["content"]
    assert content["application/json"]["schema"]["$ref"].endswith("/V2InferenceRequest")
    assert "application/octet-stream" in content
    request = spec["components"]["schemas"]["V2InferenceRequest"]
    assert set(request["properties"]) == {"id", "inputs", "outputs", "parameters"}
    assert "422" in infer["responses"] and "V2InferenceResponse" in json.dumps(infer["responses"])
    assert "/v2/models/{name}/config" in spec["paths"]
    assert "/v2/repository/index" in spec["paths"]
    assert not any("{path}" in p for p in spec["paths"])


def test_json_bodies_are_bounded_before_parsing(toy_repo: tuple[Path, AffineFlow]) -> None:
    with service_client(toy_repo[0], max_rows=10) as client:
        big = _tensor("FP32", [0.0] * 3000, shape=[1000, 3])
        r = client.post("/v2/models/toy/infer", json=big)
        assert r.status_code == 413 and isinstance(r.json()["error"], str)
        # The binary section is not JSON: only the header is bounded, the shape checks the rest.
        body, n = _binary_request(np.zeros((20, 3), dtype="<f4"))
        r = client.post("/v2/models/toy/infer", content=body, headers={HEADER: str(n)})
        assert r.status_code == 413 and "20 rows" in r.json()["error"]
        ok, n = _binary_request(np.zeros((10, 3), dtype="<f4"))
        assert client.post("/v2/models/toy/infer", content=ok, headers={HEADER: str(n)}).is_success
