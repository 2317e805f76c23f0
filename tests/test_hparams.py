"""One vocabulary of hyper-parameters: every builder's options, the table in
flowserve.models.hparams and the table in docs/models.md say the same; old names still work."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch

from flowserve.models import build_flow
from flowserve.models.base import FAMILIES
from flowserve.models.config import ConfigError, resolve_config
from flowserve.models.hparams import HPARAMS, RENAMED_HPARAMS

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def _doc_table() -> dict[str, set[str]]:
    """name -> families, from the first table of docs/models.md."""
    text = DOC.read_text().split("## Hyper-parameters", 1)[1].split("###", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", cells[2]))
    return rows


def _takes() -> dict[str, set[str]]:
    """name -> the families whose builder takes it."""
    takes: dict[str, set[str]] = {}
    for family, builder in FAMILIES.items():
        for name in inspect.signature(builder).parameters:
            takes.setdefault(name, set()).add(family)
    return takes


def test_every_builder_option_is_in_the_vocabulary_and_the_docs() -> None:
    takes, doc = _takes(), _doc_table()
    assert set(takes) == set(HPARAMS) == set(doc)
    # Two rows say it in words: "every vector family" and "every family but planar and radial".
    assert takes.pop("dim") == set(FAMILIES) - takes["shape"]
    assert takes.pop("hidden") == set(FAMILIES) - doc["hidden"]
    for name, families in takes.items():
        assert families == doc[name], name


def test_no_builder_takes_an_old_name() -> None:
    assert not set(RENAMED_HPARAMS) & set(_takes())


def test_old_names_build_the_same_flow_with_a_warning() -> None:
    torch.manual_seed(0)
    new = build_flow("realnvp", dim=3, layers=2, hidden=8, hidden_layers=1, scale_bound=2.0)
    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match="is now called") as record:
        old = build_flow("realnvp", dim=3, layers=2, hidden=8, depth=1, clamp=2.0)
    messages = " ".join(str(w.message) for w in record)
    assert "'depth' is now called 'hidden_layers'" in messages
    assert "'clamp' is now called 'scale_bound'" in messages
    assert old.hparams == new.hparams
    x = torch.randn(5, 3)
    assert torch.equal(old.log_prob(x), new.log_prob(x))
    with pytest.raises(ValueError, match="give only 'hidden_layers'"):
        build_flow("nice", dim=3, depth=1, hidden_layers=1)


def test_config_files_with_old_names_resolve_to_new_ones() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        config = resolve_config({"family": "glow", "params": {"clamp": 2.0}}, {"layers": 2})
    assert config.params == {"scale_bound": 2.0}
    with pytest.raises(ConfigError, match="give only"):
        resolve_config({"params": {"depth": 1, "hidden_layers": 2}})


def test_ffjord_layers_stack_ode_blocks_and_one_block_is_the_old_model() -> None:
    torch.manual_seed(0)
    one = build_flow("ffjord", dim=2, hidden=8, hidden_layers=2, steps=4).double().eval()
    # One block stands alone: the parameter names of every ffjord model trained before.
    assert all(name.startswith("transform.dynamics.") for name, _ in one.named_parameters())
    torch.manual_seed(0)
    two = build_flow("ffjord", dim=2, layers=2, hidden=8, steps=4).double().eval()
    blocks = list(two.transform.transforms)
    assert len(blocks) == 2
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, ld = two.transform(x)
        mid, ld0 = blocks[0](x)
        _, ld1 = blocks[1](mid)
        back = two.decode(two.encode(x))
    assert torch.allclose(ld, ld0 + ld1)
    assert torch.allclose(back, x, atol=1e-6)
