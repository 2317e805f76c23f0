"""The service as a real process, without torch, and serving a real exported flow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.live_server import live_server
from tests.service_fixtures import (
    build_affine_artifact,
    build_torchscript_only_artifact,
    service_client,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_flowserve_serve_process(tmp_path):
    _, flow = build_affine_artifact(tmp_path, "toy", 1)
    with live_server(tmp_path, {"FLOWSERVE_API_KEYS": "secret"}) as base:
        x = flow.sample(4, 1)
        h = {"X-API-Key": "secret"}
        r = httpx.post(f"{base}/log_prob", json={"inputs": x.tolist()}, headers=h, timeout=10)
        np.testing.assert_allclose(r.json()["log_prob"], flow.log_prob(x), atol=1e-4)
        assert httpx.post(f"{base}/log_prob", json={"inputs": x.tolist()}).status_code == 401
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert "flowserve_requests_total" in httpx.get(f"{base}/metrics").text


def test_serves_without_torch(tmp_path):
    _, flow = build_affine_artifact(tmp_path, "toy", 1)
    build_torchscript_only_artifact(tmp_path, "scripted", 1)
    x = flow.sample(3, 5)
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from fastapi.testclient import TestClient
        from flowserve.service.app import create_app
        from flowserve.service.settings import ServiceSettings
        app = create_app(ServiceSettings(model_root={str(tmp_path)!r}, default_model="toy"))
        with TestClient(app) as c:
            lp = c.post("/log_prob", json={{"inputs": {x.tolist()!r}}}).json()["log_prob"]
            scripted = c.get("/models/scripted").json()["versions"][0]
            refused = c.post("/models/scripted/log_prob", json={{"inputs": [[1.0, 2.0]]}})
        print(json.dumps({{"lp": lp, "scripted": scripted, "refused": refused.status_code,
                          "torch": sys.modules.get("torch") is not None}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(res["lp"], flow.log_prob(x), atol=1e-4)
    assert res["scripted"]["status"] == "failed"
    assert "needs torch" in res["scripted"]["error"]
    assert "pip install torch" in res["scripted"]["error"]
    assert res["refused"] == 503 and res["torch"] is False


def test_serves_a_real_exported_flow(tmp_path):
    torch = pytest.importorskip("torch")
    export = pytest.importorskip("flowserve.models.export")

    from flowserve.models import build_flow

    torch.manual_seed(0)
    flow = build_flow("realnvp", dim=3, layers=2, hidden=16).eval()
    with torch.no_grad():  # move away from the identity init so the test is not trivial
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = np.random.default_rng(0).normal(size=(256, 3)).astype(np.float32)
    out = tmp_path / "rnvp" / "1"
    export.export_artifact(
        flow,
        out,
        name="rnvp",
        version=1,
        feature_names=["a", "b", "c"],
        holdout=rows,
        torchscript=False,
    )
    x = rows[:8]
    with torch.no_grad():
        expected = flow.log_prob(torch.from_numpy(x)).numpy()
    with service_client(tmp_path) as c:
        r = c.post("/log_prob", json={"inputs": x.tolist()}).json()
        np.testing.assert_allclose(r["log_prob"], expected, atol=1e-3)
        z = c.post("/encode", json={"inputs": x.tolist()}).json()["z"]
        back = np.array(c.post("/decode", json={"inputs": z}).json()["x"])
        np.testing.assert_allclose(back, x, atol=1e-3)
