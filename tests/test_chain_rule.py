"""Exact chain-rule explanations: which flows have one, the exported graph's terms are normalized
conditionals summing to log_prob, and /explain serves them (torch for building the flow only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from flowserve.artifact import CHAIN_RULE_GRAPH, verify_artifact
from flowserve.models.autoregressive import (
    ElementwiseAffine,
    MaskedAutoregressiveTransform,
    build_maf,
)
from flowserve.models.base import Chain, Flow, Standardize, StandardNormal
from flowserve.models.chain_rule import ChainRuleGraph, chain_rule_order
from flowserve.models.export import export_artifact
from flowserve.models.nets import layer_scale_bound
from tests.service_fixtures import service_client

MEAN = np.array([10.0, -3.0, 0.5])
SCALE = np.array([2.0, 0.5, 1.5])


def _single_order_maf(layers: int = 1, seed: int = 0) -> Flow:
    """A MAF whose layers all share one order (feature 2 first, then 0, then 1), with random
    (non-identity) weights."""
    torch.manual_seed(seed)
    order = torch.tensor([2, 3, 1])  # the rank of each feature
    bound = layer_scale_bound(3.0, layers)
    transforms = [
        MaskedAutoregressiveTransform(3, ElementwiseAffine(bound), 16, 2, order)
        for _ in range(layers)
    ]
    flow = Flow(Chain(transforms), StandardNormal((3,)), family="maf", hparams={"layers": layers})
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow.set_preprocess(Standardize(torch.tensor(MEAN), torch.tensor(SCALE)))


def test_only_single_order_autoregressive_stacks_have_a_chain_rule() -> None:
    assert chain_rule_order(_single_order_maf(layers=2)) == [2, 0, 1]
    assert chain_rule_order(build_maf(3, layers=3, hidden=8)) is None  # orders alternate
    from flowserve.models import build_flow

    assert chain_rule_order(build_flow("realnvp", dim=3, layers=2, hidden=8)) is None
    assert chain_rule_order(build_flow("iaf", dim=3, layers=1, hidden=8)) is None  # inverted


def test_terms_are_normalized_conditionals_summing_to_log_prob() -> None:
    flow = _single_order_maf(layers=2).float().eval()
    graph = ChainRuleGraph(flow).eval()
    x = torch.from_numpy(MEAN + SCALE * np.random.default_rng(0).normal(size=(64, 3))).float()
    with torch.no_grad():
        terms = graph(x)
        torch.testing.assert_close(terms.sum(1), flow.log_prob(x), atol=1e-4, rtol=1e-5)
        # p(x_1 | x_2, x_0) integrates to 1 over x_1, for a fixed context (order 2, 0, 1)
        grid = torch.linspace(-3.0 - 12 * 0.5, -3.0 + 12 * 0.5, 4001)
        for row in x[:3]:
            rows = row.repeat(len(grid), 1)
            rows[:, 1] = grid
            density = torch.exp(graph(rows)[:, 1]).double()
            assert torch.trapezoid(density, grid.double()).item() == pytest.approx(1.0, abs=2e-3)
        # the first in the order (x_2) is a marginal: it depends on nothing else
        moved = x.clone()
        moved[:, [0, 1]] += 5.0
        torch.testing.assert_close(graph(moved)[:, 2], terms[:, 2])


def test_gaussian_terms_are_its_exact_conditionals() -> None:
    """The Gaussian's map is lower triangular: its terms are log p(x_0), log p(x_1 | x_0), ...;
    the first k sum to the exact marginal of the first k features (in data units)."""
    from flowserve.models.gaussian import build_gaussian

    torch.manual_seed(0)
    flow = build_gaussian(3).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.4 * torch.randn_like(p))
    flow.set_preprocess(Standardize(torch.tensor(MEAN), torch.tensor(SCALE))).eval()
    assert chain_rule_order(flow) == [0, 1, 2]
    x = torch.from_numpy(MEAN + SCALE * np.random.default_rng(0).normal(size=(32, 3)))
    layer = flow.transform
    weight = layer.weight()
    with torch.no_grad():
        terms = ChainRuleGraph(flow).eval()(x)
        torch.testing.assert_close(terms.sum(1), flow.log_prob(x))
        # in standardized units y ~ N(-W^-1 b, (W^T W)^-1); x = mean + scale * y
        cov = torch.linalg.inv(weight.T @ weight)
        mu = -torch.linalg.solve(weight, layer.shift)
        y = (x - torch.tensor(MEAN)) / torch.tensor(SCALE)
        for k in (1, 2, 3):
            marginal = torch.distributions.MultivariateNormal(mu[:k], cov[:k, :k])
            expected = marginal.log_prob(y[:, :k]) - torch.log(torch.tensor(SCALE[:k])).sum()
            torch.testing.assert_close(terms[:, :k].sum(1), expected)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    root = tmp_path_factory.mktemp("models")
    holdout = (MEAN + SCALE * np.random.default_rng(1).normal(size=(300, 3))).astype(np.float32)
    for name, flow in (("chain", _single_order_maf()), ("plain", build_maf(3, 2, 8))):
        if name == "plain":
            flow.set_preprocess(Standardize(torch.tensor(MEAN), torch.tensor(SCALE)))
        export_artifact(
            flow, root / name / "1", name=name, version=1, feature_names=["a", "b", "c"],
            holdout=holdout, torchscript=False,
        )  # fmt: skip
    with service_client(root, default_model="chain") as client:
        yield client, root


def test_export_ships_the_chain_rule_graph_only_where_exact(served) -> None:
    client, root = served
    info = client.get("/models").json()
    assert {m["name"] for m in info["models"]} == {"chain", "plain"}
    chain, plain = verify_artifact(root / "chain" / "1"), verify_artifact(root / "plain" / "1")
    assert chain.chain_rule_order == [2, 0, 1] and chain.graphs["chain_rule"] == CHAIN_RULE_GRAPH
    assert CHAIN_RULE_GRAPH in chain.files
    assert plain.chain_rule_order is None and "chain_rule" not in plain.graphs


def test_explain_serves_the_exact_decomposition(served) -> None:
    client, _ = served
    x = (MEAN + SCALE * np.random.default_rng(2).normal(size=(6, 3))).tolist()
    x[0][0] += 12.0
    body = client.post("/models/chain/explain", json={"inputs": x}).json()
    assert body["kind"] == "chain_rule" and body["order"] == ["c", "a", "b"]
    assert body["baseline"] is None
    contributions, score = np.array(body["contributions"]), np.array(body["score"])
    np.testing.assert_allclose(contributions.sum(axis=1), score, atol=1e-3, rtol=1e-5)
    scored = client.post("/models/chain/score", json={"inputs": x}).json()
    np.testing.assert_allclose(score, scored["score"], rtol=1e-6)
    # a baseline, or method shapley, asks for Shapley values instead
    shap = client.post("/models/chain/explain", json={"inputs": x, "method": "shapley"}).json()
    assert shap["kind"] == "shapley_exact"
    refused = client.post("/models/plain/explain", json={"inputs": x, "method": "chain_rule"})
    assert (
        refused.status_code == 422 and "no exact chain-rule" in refused.json()["error"]["message"]
    )
    auto = client.post("/models/plain/explain", json={"inputs": x}).json()
    assert auto["kind"] == "shapley_exact"
