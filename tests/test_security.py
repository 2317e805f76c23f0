"""Closed by default and contained: artifact paths and ONNX external data stay inside the version
directory, admin endpoints need an admin key, keys never come from argv, blank key lists are
errors, and option fields are strictly typed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, numpy_helper
from pydantic import ValidationError

from flowserve.artifact import (
    FORWARD_GRAPH,
    ArtifactError,
    load_manifest,
    sha256_file,
    verify_artifact,
    write_manifest,
)
from flowserve.onnx_refs import external_data_locations
from flowserve.service import cli as serve_cli
from flowserve.service.repository import ModelRepository
from flowserve.service.settings import ServiceSettings
from tests.service_fixtures import affine_flow, build_affine_artifact, service_client

ROW = [[0.5, -0.5, 1.0]]


def _rewrite_manifest(directory: Path, **update: object) -> None:
    manifest = load_manifest(directory)
    write_manifest(directory, manifest.model_copy(update=update))


def _edit_manifest_json(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --- artifact containment -------------------------------------------------------------------


@pytest.mark.parametrize(
    "graph", ["/etc/forward.onnx", "../other/forward.onnx", "sub/../../forward.onnx", "a\\b.onnx"]
)
def test_manifest_paths_must_stay_inside(tmp_path: Path, graph: str) -> None:
    directory, _ = build_affine_artifact(tmp_path, "toy", 1)

    def edit(data: dict) -> None:
        data["graphs"]["forward"] = graph
        data["files"][graph] = data["files"].pop(FORWARD_GRAPH)

    _edit_manifest_json(directory, edit)
    with pytest.raises(ArtifactError, match="invalid manifest at"):
        verify_artifact(directory)
    mv = ModelRepository(tmp_path).reload().models["toy"][1]
    assert mv.status == "failed" and graph.replace("\\", "\\\\") in mv.error


def test_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    directory, _ = build_affine_artifact(tmp_path / "models", "toy", 1)
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes((directory / FORWARD_GRAPH).read_bytes())  # same bytes, same checksum
    (directory / FORWARD_GRAPH).unlink()
    (directory / FORWARD_GRAPH).symlink_to(outside)
    with pytest.raises(ArtifactError, match="resolves outside the artifact directory"):
        verify_artifact(directory)
    # a symlink that stays inside is fine
    (directory / FORWARD_GRAPH).unlink()
    (directory / "real.onnx").write_bytes(outside.read_bytes())
    (directory / FORWARD_GRAPH).symlink_to("real.onnx")
    assert verify_artifact(directory).name == "toy"


def _externalize(directory: Path, location: str = "weights.bin") -> onnx.ModelProto:
    """Move the forward graph's float initializers into ``location`` (ONNX external data)."""
    path = directory / FORWARD_GRAPH
    model = onnx.load(str(path))
    with open(directory / location, "wb") as f:
        for tensor in model.graph.initializer:
            if tensor.data_type != onnx.TensorProto.FLOAT:
                continue  # ONNX Runtime wants shape inputs (ReduceSum's axes) inline
            raw = numpy_helper.to_array(tensor).tobytes()
            offset = f.tell()
            f.write(raw)
            tensor.ClearField("float_data")
            tensor.raw_data = raw
            external_data_helper.set_external_data(
                tensor, location=location, offset=offset, length=len(raw)
            )
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
    path.write_bytes(model.SerializeToString())
    return model


def _set_locations(directory: Path, model: onnx.ModelProto, location: str) -> None:
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    (directory / FORWARD_GRAPH).write_bytes(model.SerializeToString())


def test_external_data_locations_match_onnx(tmp_path: Path) -> None:
    directory, _ = build_affine_artifact(tmp_path, "toy", 1)
    assert external_data_locations((directory / FORWARD_GRAPH).read_bytes()) == []
    model = _externalize(directory)
    expected = [
        t.name
        for t in external_data_helper._get_all_tensors(model)
        if external_data_helper.uses_external_data(t)
    ]
    got = external_data_locations((directory / FORWARD_GRAPH).read_bytes())
    assert len(expected) > 0 and got == ["weights.bin"] * len(expected)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_external_data_behind_a_group_field_is_still_found(tmp_path: Path) -> None:
    """Protobuf parsers skip unknown (deprecated) group fields; so does this reader, rather
    than giving up on the graph and letting its external data through."""
    directory, _ = build_affine_artifact(tmp_path, "toy", 1)
    _externalize(directory)
    group = _varint(99 << 3 | 3) + b"\x08\x01" + _varint(99 << 3 | 4)
    data = group + (directory / FORWARD_GRAPH).read_bytes()
    assert len(external_data_locations(data)) == len(external_data_locations(data[len(group) :]))
    assert external_data_locations(data) and set(external_data_locations(data)) == {"weights.bin"}
    # bytes that are no protobuf at all: ONNX Runtime cannot load them either, and says so
    (directory / FORWARD_GRAPH).write_bytes(b"not an onnx graph")
    files = {f: sha256_file(directory / f) for f in (FORWARD_GRAPH, "inverse.onnx")}
    _rewrite_manifest(directory, files=files)
    assert verify_artifact(directory).name == "toy"
    mv = ModelRepository(tmp_path).reload().models["toy"][1]
    assert mv.status == "failed" and "ONNX Runtime cannot load" in mv.error


def test_external_data_must_be_checksummed(tmp_path: Path) -> None:
    directory, flow = build_affine_artifact(tmp_path, "toy", 1)
    _externalize(directory)
    files = {f: sha256_file(directory / f) for f in (FORWARD_GRAPH, "inverse.onnx")}
    _rewrite_manifest(directory, files=files)
    with pytest.raises(ArtifactError, match="lists no checksum"):
        verify_artifact(directory)
    # listed, so checksummed: it loads and serves the same answers
    files["weights.bin"] = sha256_file(directory / "weights.bin")
    _rewrite_manifest(directory, files=files)
    with service_client(tmp_path) as c:
        r = c.post("/models/toy/log_prob", json={"inputs": ROW})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["log_prob"], flow.log_prob(np.array(ROW)), atol=1e-4)
    # and a changed external file is a checksum mismatch
    (directory / "weights.bin").write_bytes(b"\0" * (directory / "weights.bin").stat().st_size)
    with pytest.raises(ArtifactError, match=r"checksum mismatch for weights\.bin"):
        verify_artifact(directory)


@pytest.mark.parametrize("location", ["../../secret.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_traversal_is_refused(tmp_path: Path, location: str) -> None:
    root = tmp_path / "models"
    directory, _ = build_affine_artifact(root, "toy", 1)
    (tmp_path / "secret.bin").write_bytes(b"secret" * 100)
    model = _externalize(directory)
    _set_locations(directory, model, location)
    files = {f: sha256_file(directory / f) for f in (FORWARD_GRAPH, "inverse.onnx")}
    _rewrite_manifest(directory, files=files)
    with pytest.raises(ArtifactError, match=r"external data of forward\.onnx"):
        verify_artifact(directory)
    with service_client(root) as c:
        r = c.post("/models/toy/versions/1/log_prob", json={"inputs": ROW})
        assert r.status_code == 503 and "external data" in r.json()["error"]["message"]


# --- keys and admin -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [" , ", ",", " ,\n, "])
def test_blank_key_lists_are_errors(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="holds no key"):
        ServiceSettings(api_keys=value)
    monkeypatch.setenv("FLOWSERVE_ADMIN_KEYS", value)
    with pytest.raises(ValidationError, match="holds no key"):
        ServiceSettings()


def test_unset_key_list_means_no_auth() -> None:
    assert ServiceSettings(api_keys="").api_keys == []
    assert ServiceSettings(api_keys=" k1 , k2 ").api_keys == ["k1", "k2"]


def test_keys_from_files(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("k1\nk2, k3\n\n")
    (tmp_path / "admin").write_text("root-key\n")
    (tmp_path / "empty").write_text("\n , \n")
    s = ServiceSettings(api_key_file=tmp_path / "keys", admin_key_file=tmp_path / "admin")
    assert s.api_keys == ["k1", "k2", "k3"] and s.admin_keys == ["root-key"]
    with pytest.raises(ValidationError, match="holds no key"):
        ServiceSettings(api_key_file=tmp_path / "empty")
    with pytest.raises(ValidationError, match="cannot be read"):
        ServiceSettings(api_key_file=tmp_path / "missing")
    with pytest.raises(ValidationError, match="must not also be a model key"):
        ServiceSettings(api_keys="same", admin_keys="same")


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    return parser.parse_args(list(argv))


def test_serve_refuses_keys_on_argv_and_blank_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR"):
        assert serve_cli.run(_serve_args("--api-keys", "k1", "--models", str(tmp_path))) == 2
    assert "visible to every user in ps" in caplog.text and "--api-key-file" in caplog.text
    caplog.clear()
    monkeypatch.setenv("FLOWSERVE_API_KEYS", " , ")
    with caplog.at_level("ERROR"):
        assert serve_cli.run(_serve_args("--models", str(tmp_path))) == 2
    assert "api_keys" in caplog.text and "holds no key" in caplog.text


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_affine_artifact(root, "toy", 1, affine_flow(3, seed=0))
    return root


def test_admin_is_off_without_an_admin_key(root: Path) -> None:
    with service_client(root, api_keys="model-key") as c:
        r = c.post("/admin/reload", headers={"x-api-key": "model-key"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
        assert "FLOWSERVE_ADMIN_KEYS" in r.json()["error"]["message"]


def test_admin_needs_the_admin_key_not_a_model_key(root: Path) -> None:
    with service_client(root, api_keys="model-key", admin_keys="admin-key") as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"x-api-key": "model-key"}).status_code == 401
        ok = c.post("/admin/reload", headers={"authorization": "Bearer admin-key"})
        assert ok.status_code == 200 and ok.json()["models"][0]["name"] == "toy"
        # the admin key is not a model key either
        r = c.post("/log_prob", json={"inputs": ROW}, headers={"x-api-key": "admin-key"})
        assert r.status_code == 401


# --- strict typing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "code", "field"),
    [
        ("/score", {"inputs": ROW, "fpr": "0.1"}, "invalid_input", "fpr"),
        ("/score", {"inputs": ROW, "fpr": True}, "invalid_input", "fpr"),
        ("/sample", {"n": "2"}, "invalid_input", "n"),
        ("/sample", {"n": True}, "invalid_input", "n"),
        ("/sample", {"n": 2.5}, "invalid_input", "n"),
        ("/sample", {"temperature": "1"}, "invalid_input", "temperature"),
        ("/sample", {"seed": -1}, "out_of_range", "seed"),
        ("/sample", {"seed": 2**64}, "out_of_range", "seed"),
        ("/sample", {"seed": "1"}, "invalid_input", "seed"),
    ],
)
def test_options_are_strictly_typed(root: Path, path: str, body: dict, code: str, field: str):
    with service_client(root) as c:
        r = c.post(path, json=body)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == code and field in err["message"]


def test_integral_numbers_are_integers_and_query_fpr_still_works(root: Path) -> None:
    with service_client(root) as c:
        r = c.post("/sample", json={"n": 3.0, "seed": 7.0})
        assert r.status_code == 200 and len(r.json()["samples"]) == 3
        r = c.post("/score?fpr=0.2", json={"inputs": ROW})
        assert r.status_code == 200 and r.json()["fpr"] == 0.2


@pytest.mark.parametrize("version", ["+1", "01", " 1", "1.0", "１"])
def test_versions_are_canonical_decimals(root: Path, version: str) -> None:
    with service_client(root) as c:
        r = c.post(f"/models/toy/versions/{version}/log_prob", json={"inputs": ROW})
        assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
        assert c.get(f"/models/toy/versions/{version}").status_code == 404
        assert c.post("/models/toy/versions/1/log_prob", json={"inputs": ROW}).status_code == 200
