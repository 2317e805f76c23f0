"""HTTP contract of the service, in process, against an affine flow with closed-form answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service_fixtures import (
    AffineFlow,
    affine_flow,
    build_affine_artifact,
    npy_bytes,
    npy_load,
    service_client,
)

PREFIXES = ["", "/models/toy", "/models/toy/versions/1"]
NPY = "application/x-npy"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AffineFlow]:
    root = tmp_path_factory.mktemp("models")
    _, flow = build_affine_artifact(root, "toy", 1, affine_flow(3, seed=0))
    build_affine_artifact(root, "other", 1, affine_flow(4, seed=1))
    return root, flow


def make_client(root: Path, **overrides: object) -> TestClient:
    return service_client(root, default_model="toy", **overrides)


@pytest.fixture(scope="module")
def client(repo: tuple[Path, AffineFlow]) -> Iterator[TestClient]:
    with make_client(repo[0], max_rows=50, max_body_bytes=20_000, max_sample=100) as c:
        yield c


@pytest.fixture(scope="module")
def flow(repo: tuple[Path, AffineFlow]) -> AffineFlow:
    return repo[1]


def rows(flow: AffineFlow, n: int = 5, seed: int = 3) -> np.ndarray:
    return flow.sample(n, seed).astype(np.float32)


def assert_error(r, status: int, code: str, *words: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    for w in words:
        assert w in err["message"], err["message"]
    return err


@pytest.mark.parametrize("prefix", PREFIXES)
def test_log_prob_is_exact_gaussian_density(client, flow, prefix):
    x = rows(flow)
    r = client.post(f"{prefix}/log_prob", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"]) == ("toy", 1)
    np.testing.assert_allclose(body["log_prob"], flow.log_prob(x), atol=1e-4)


def test_default_model_and_other_model_answer_separately(client):
    r = client.post("/models/other/log_prob", json={"inputs": [[0.0] * 4]})
    assert r.status_code == 200 and r.json()["model"] == "other"
    assert_error(client.post("/log_prob", json={"inputs": [[0.0] * 4]}), 422, "invalid_input")


def test_rows_as_objects_keyed_by_feature_names(client, flow):
    x = rows(flow, 3)
    objs = [dict(zip(flow.feature_names, map(float, r), strict=True)) for r in x]
    r = client.post("/log_prob", json={"inputs": objs})
    np.testing.assert_allclose(r.json()["log_prob"], flow.log_prob(x), atol=1e-4)
    missing = [{"f0": 1.0, "f1": 2.0}]
    assert_error(client.post("/log_prob", json={"inputs": missing}), 422, "invalid_input", "f2")
    unknown = [{"f0": 1.0, "f1": 2.0, "f2": 3.0, "zz": 1.0}]
    assert_error(client.post("/log_prob", json={"inputs": unknown}), 422, "invalid_input", "zz")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_encode_decode_round_trip(client, flow, prefix):
    x = rows(flow, 6)
    enc = client.post(f"{prefix}/encode", json={"inputs": x.tolist()}).json()
    z = np.array(enc["z"])
    np.testing.assert_allclose(z, flow.encode(x), atol=1e-4)
    # log_det = log|det dz/dx| = sum log|a| - sum log std, the same for every row
    np.testing.assert_allclose(enc["log_det"], flow.log_det(), atol=1e-4)
    dec = client.post(f"{prefix}/decode", json={"inputs": enc["z"]}).json()
    np.testing.assert_allclose(np.array(dec["x"]), x, atol=1e-4)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_sample_is_deterministic_by_seed(client, flow, prefix):
    a = client.post(f"{prefix}/sample", json={"n": 7, "seed": 11}).json()
    b = client.post(f"{prefix}/sample", json={"n": 7, "seed": 11}).json()
    c = client.post(f"{prefix}/sample", json={"n": 7, "seed": 12}).json()
    assert np.array(a["samples"]).shape == (7, 3)
    assert a["samples"] == b["samples"] and a["samples"] != c["samples"]
    # base noise from the manifest's base distribution, through the inverse graph
    z = np.random.default_rng(11).standard_normal((7, 3)).astype(np.float32)
    np.testing.assert_allclose(a["samples"], flow.decode(z), atol=1e-4)


def test_sample_temperature_scales_noise(client, flow):
    cold = np.array(
        client.post("/sample", json={"n": 50, "seed": 1, "temperature": 0.01}).json()["samples"]
    )
    center = flow.decode(np.zeros((1, 3)))
    assert np.abs(cold - center).max() < 0.2


def test_score_matches_manifest_calibration(client, flow, repo):
    from flowserve.artifact import load_manifest

    cal = load_manifest(repo[0] / "toy" / "1").calibration
    x = np.concatenate([rows(flow, 20), [[50.0, -50.0, 50.0]]]).astype(np.float32)
    r = client.post("/score", json={"inputs": x.tolist()}).json()
    assert r["fpr"] == cal.default_fpr and r["threshold"] == pytest.approx(cal.threshold)
    lp = flow.log_prob(x)
    np.testing.assert_allclose(r["log_prob"], lp, atol=1e-4)
    np.testing.assert_allclose(r["score"], -lp, atol=1e-4)
    np.testing.assert_allclose(r["percentile"], cal.percentile(np.array(r["log_prob"])), atol=1e-4)
    assert r["is_anomaly"] == [v < cal.threshold for v in r["log_prob"]]
    assert r["is_anomaly"][-1] and r["percentile"][-1] == 100.0
    # a larger false-positive rate raises the threshold and flags at least as many rows
    hi = client.post("/score", json={"inputs": x.tolist(), "fpr": 0.5}).json()
    assert hi["fpr"] == 0.5 and hi["threshold"] == pytest.approx(cal.threshold_for(0.5))
    assert hi["threshold"] > r["threshold"] and sum(hi["is_anomaly"]) >= sum(r["is_anomaly"])


def test_binary_npy_bodies(client, flow):
    x = rows(flow, 30)
    for dtype in (np.float32, np.float64):
        r = client.post(
            "/log_prob",
            content=npy_bytes(x.astype(dtype)),
            headers={"content-type": NPY, "accept": NPY},
        )
        assert r.status_code == 200 and r.headers["content-type"] == NPY
        assert (r.headers["x-flowserve-model"], r.headers["x-flowserve-version"]) == ("toy", "1")
        lp = npy_load(r.content)
        assert lp.dtype == np.float32 and lp.shape == (30,)
        np.testing.assert_allclose(lp, flow.log_prob(x), atol=1e-4)
    z = npy_load(
        client.post(
            "/encode", content=npy_bytes(x), headers={"content-type": NPY, "accept": NPY}
        ).content
    )
    np.testing.assert_allclose(z, flow.encode(x), atol=1e-4)
    back = npy_load(
        client.post(
            "/decode", content=npy_bytes(z), headers={"content-type": NPY, "accept": NPY}
        ).content
    )
    np.testing.assert_allclose(back, x, atol=1e-4)
    r = client.post(
        "/score?fpr=0.3", content=npy_bytes(x), headers={"content-type": NPY, "accept": NPY}
    )
    table = npy_load(r.content)
    assert table.shape == (30, 3) and table.dtype == np.float32
    threshold = float(r.headers["x-flowserve-threshold"])
    assert float(r.headers["x-flowserve-fpr"]) == 0.3
    np.testing.assert_array_equal(table[:, 2], (table[:, 0] < threshold).astype(np.float32))
    # binary in, JSON out
    js = client.post("/log_prob", content=npy_bytes(x), headers={"content-type": NPY}).json()
    np.testing.assert_allclose(js["log_prob"], flow.log_prob(x), atol=1e-4)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"inputs": [[1.0, 2.0]]}, ["expected rows of 3", "got 2"]),
        ({"inputs": [[1.0, 2.0, 3.0], [1.0, 2.0]]}, ["row 1 has 2 values, expected 3"]),
        ({"inputs": [[1.0, "abc", 3.0]]}, ["row 0, column 1 is not a number"]),
        ({"inputs": [[1.0, None, 3.0]]}, ["not a number"]),
        ({"inputs": [[1.0, True, 3.0]]}, ["not a number"]),
        ({"inputs": []}, ["empty"]),
        ({"inputs": "nope"}, ["must be a list"]),
        ({"rows": [[1.0, 2.0, 3.0]]}, ["unknown fields ['rows']"]),
        ({}, ["missing field 'inputs'"]),
        ([1, 2], ["JSON object"]),
    ],
)
def test_invalid_json_input(client, body, words):
    assert_error(client.post("/log_prob", json=body), 422, "invalid_input", *words)


def test_nan_and_inf_name_the_rows(client):
    body = b'{"inputs": [[1, 2, 3], [NaN, 0, 0], [1, 2, 3], [0, Infinity, 0]]}'
    r = client.post("/log_prob", content=body, headers={"content-type": "application/json"})
    err = assert_error(r, 422, "invalid_input", "[1, 3]", "NaN or Inf")
    assert err["rows"] == [1, 3]
    bad = np.ones((4, 3), dtype=np.float32)
    bad[2, 1] = np.nan
    r = client.post("/log_prob", content=npy_bytes(bad), headers={"content-type": NPY})
    assert assert_error(r, 422, "invalid_input", "NaN")["rows"] == [2]
    r = client.post("/log_prob", json={"inputs": [[1e300, 0.0, 0.0]]})
    assert_error(r, 422, "invalid_input", "float32 range")


def test_bad_npy_bodies(client):
    h = {"content-type": NPY}
    assert_error(
        client.post("/log_prob", content=b"garbage", headers=h), 422, "invalid_input", ".npy"
    )
    ints = npy_bytes(np.ones((2, 3), dtype=np.int64))
    assert_error(client.post("/log_prob", content=ints, headers=h), 422, "invalid_input", "float32")
    wide = npy_bytes(np.ones((2, 5), dtype=np.float32))
    assert_error(
        client.post("/log_prob", content=wide, headers=h),
        422,
        "invalid_input",
        "expected rows of 3",
    )
    empty = npy_bytes(np.ones((0, 3), dtype=np.float32))
    assert_error(client.post("/log_prob", content=empty, headers=h), 422, "invalid_input", "empty")
    truncated = npy_bytes(np.ones((4, 3), dtype=np.float32))[:-5]
    assert_error(
        client.post("/log_prob", content=truncated, headers=h), 422, "invalid_input", "bytes"
    )


def test_unknown_model_and_version(client):
    assert_error(
        client.post("/models/nope/log_prob", json={"inputs": [[1, 2, 3]]}),
        404,
        "model_not_found",
        "nope",
        "toy",
    )
    assert_error(
        client.post("/models/toy/versions/9/log_prob", json={"inputs": [[1, 2, 3]]}),
        404,
        "version_not_found",
        "9",
    )
    assert_error(client.post("/models/toy/versions/x/sample", json={}), 404, "version_not_found")
    assert_error(client.get("/models/nope"), 404, "model_not_found")
    assert_error(client.get("/models/toy/versions/3"), 404, "version_not_found")
    assert_error(client.get("/no/such/path"), 404, "not_found")


def test_too_many_rows_and_body_too_large(client):
    too_many = {"inputs": [[0.0, 0.0, 0.0]] * 51}
    assert_error(client.post("/log_prob", json=too_many), 413, "too_many_rows", "51", "50")
    huge = b'{"inputs": [' + b",".join([b"[0.0,0.0,0.0]"] * 2000) + b"]}"
    assert_error(
        client.post("/log_prob", content=huge, headers={"content-type": "application/json"}),
        413,
        "body_too_large",
        "20000",
    )


def test_body_too_large_streamed_without_content_length(client):
    def chunks():
        for _ in range(100):
            yield b" " * 1000  # never valid JSON: proves the limit fires before parsing

    r = client.post("/log_prob", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "body_too_large")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/sample", {"n": 0}, "n"),
        ("/sample", {"n": 101}, "n"),
        ("/sample", {"n": 2, "temperature": 0}, "temperature"),
        ("/sample", {"n": 2, "temperature": 11}, "temperature"),
        ("/score", {"inputs": [[1, 2, 3]], "fpr": 0}, "fpr"),
        ("/score", {"inputs": [[1, 2, 3]], "fpr": 1.5}, "fpr"),
        ("/score?fpr=1", {"inputs": [[1, 2, 3]]}, "fpr"),
    ],
)
def test_out_of_range_options(client, path, body, field):
    err = assert_error(client.post(path, json=body), 422, "out_of_range", field)
    assert err["field"] == field


def test_non_numeric_options_are_invalid_input(client):
    assert_error(client.post("/sample", json={"n": "many"}), 422, "invalid_input", "n")
    assert_error(client.post("/sample", json={"n": 1, "colour": 1}), 422, "invalid_input", "colour")


def test_unsupported_media_type(client):
    r = client.post(
        "/log_prob", content=b"f0=1", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_error(r, 415, "unsupported_media_type", "application/json")
    r = client.post("/sample", content=npy_bytes(np.ones((1, 3))), headers={"content-type": NPY})
    assert_error(r, 415, "unsupported_media_type")


def test_api_keys(repo):
    with make_client(repo[0], api_keys=["k1", "k2"]) as c:
        body = {"inputs": [[1, 2, 3]]}
        assert_error(c.post("/log_prob", json=body), 401, "unauthorized", "missing")
        assert_error(
            c.post("/log_prob", json=body, headers={"x-api-key": "bad"}),
            401,
            "unauthorized",
            "invalid",
        )
        assert_error(c.get("/models", headers={"authorization": "Bearer bad"}), 401, "unauthorized")
        assert_error(c.post("/admin/reload"), 403, "admin_disabled")  # no admin key set
        assert c.post("/log_prob", json=body, headers={"x-api-key": "k2"}).status_code == 200
        assert c.get("/models", headers={"authorization": "Bearer k1"}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(open_path).status_code == 200


def test_models_metadata(client, repo):
    r = client.get("/models").json()
    assert r["default"] == "toy"
    assert [m["name"] for m in r["models"]] == ["other", "toy"]
    info = client.get("/models/toy").json()
    assert info["default_version"] == 1
    v = info["versions"][0]
    assert v["status"] == "ready" and v["dim"] == 3 and v["feature_names"] == ["f0", "f1", "f2"]
    assert v["family"] == "affine-test" and v["calibration"]["default_fpr"] == 0.05
    assert client.get("/models/toy/versions/1").json() == v


def test_health_ready_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"other": 1, "toy": 1}

    def count(text: str, prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )

    before = client.get("/metrics").text
    client.post("/log_prob", json={"inputs": [[1, 2, 3], [1, 2, 3]]})
    client.post("/log_prob", json={"inputs": [[1, 2]]})
    after = client.get("/metrics").text
    ok = 'flowserve_requests_total{endpoint="log_prob",model="toy",status="200"'
    assert count(after, ok) == count(before, ok) + 1
    rows_key = 'flowserve_rows_total{endpoint="log_prob",model="toy"}'
    assert count(after, rows_key) == count(before, rows_key) + 2
    err = 'flowserve_errors_total{code="invalid_input"}'
    assert count(after, err) == count(before, err) + 1
    assert "flowserve_request_duration_seconds_bucket" in after


def test_readyz_is_503_before_models_load(repo):
    client = make_client(repo[0])  # not entered: the lifespan (loading) has not run
    assert_error(client.get("/readyz"), 503, "not_ready")


def test_openapi_documents_schemas(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in (
        "RowsRequest",
        "ScoreRequest",
        "SampleRequest",
        "LogProbResponse",
        "ScoreResponse",
        "ModelInfo",
        "ErrorBody",
    ):
        assert name in schemas
    op = doc["paths"]["/models/{name}/log_prob"]["post"]
    assert set(op["requestBody"]["content"]) == {"application/json", NPY}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "LogProbResponse"
    )
    assert "422" in op["responses"]
    assert client.get("/docs").status_code == 200
