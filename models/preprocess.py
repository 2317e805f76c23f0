"""Preprocessing by the kind of data: which fixed transform runs before a family's flow.

Each family models one kind of data (:data:`FAMILY_DATA_KINDS`; every other family models
real-valued columns), and the kind decides the flow's ``preprocess``:

- ``real``: :class:`~flowserve.models.base.Standardize` with the training split's statistics,
  after a Yeo-Johnson power transform of the columns that are clearly skewed
  (:mod:`flowserve.models.power`).
- ``angle``: none. The circle/torus flows wrap angles themselves; standardizing would break
  the period (the density would no longer integrate to one over the torus).
- ``unit_vector``: :class:`OnUnitSphere`: rows off the unit sphere by more than the tolerance
  get ``log_prob = -inf`` (zero density w.r.t. the sphere's area), instead of being projected
  silently.
- ``image``: :class:`Dequantize`: in training, ``v = x + u - 1/2`` with ``u ~ U[0, 1)^D``
  (uniform) or ``u ~ q(u | x)`` learned with the flow (variational), so the model is trained on a
  valid dequantized bound; evaluation mode and the served graphs (exported with it switched off)
  score integer rows at their cell centres.

:func:`dequantized_nll` is the valid bound on the discrete negative log-likelihood (nats per row)
that image metrics report as bits/dim.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowserve.artifact import UNIT_NORM_TOLERANCE, DataKind, PowerTransform, Preprocessing
from flowserve.models.base import Flow, Standardize, Transform
from flowserve.models.power import POWER_FIELDS, PowerSpec

__all__ = [
    "FAMILY_DATA_KINDS",
    "Dequantize",
    "OnUnitSphere",
    "data_kind_of",
    "dequantized_nll",
    "image_hparams",
    "image_shape",
    "manifest_preprocessing",
    "power_transform_of",
    "preprocess_for",
    "served_flow",
]

FAMILY_DATA_KINDS: dict[str, DataKind] = {
    "circle": "angle",
    "sphere": "unit_vector",
    "glow_image": "image",
    "realnvp_image": "image",
}


def data_kind_of(family: str) -> DataKind:
    """The kind of data ``family`` models (``real`` unless it is a manifold or image family)."""
    return FAMILY_DATA_KINDS.get(family.lower(), "real")


class OnUnitSphere(Transform):
    """Identity on unit vectors; ``log|det| = -inf`` for rows whose norm is off 1 by more than
    ``tolerance`` (branch-free, so the exported graph scores them as impossible too; their
    latent is that of the north pole).

    Arguments:
        tolerance: The accepted ``|norm - 1|``.
    """

    def __init__(self, tolerance: float = UNIT_NORM_TOLERANCE) -> None:
        super().__init__()
        self.tolerance = float(tolerance)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        on = ((x.norm(dim=1) - 1.0).abs() <= self.tolerance).to(x.dtype)
        # Off rows continue as the north pole, so nothing downstream sees 0/0 (e.g. x = 0); their
        # log-det is log(0) = -inf. Arithmetic, not ``where`` with an infinite constant: the
        # exported graph must not multiply an infinity by zero.
        pole = torch.zeros_like(x[:1]).index_fill(1, torch.tensor([2]), 1.0)
        x = x * on[:, None] + pole * (1.0 - on[:, None])
        return x, torch.log(on)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z, z.new_zeros(z.shape[0])


class Dequantize(Transform):
    """Centred dequantization ``v = x + u - 1/2`` with ``u`` in ``[0, 1)^D``, in training mode
    (or while ``sampling``) and while ``enabled``; the identity otherwise (and always in
    ``inverse``). Evaluation-mode scores are thus those of the served graphs (integer rows at
    their cell centres: what calibration needs); :func:`dequantized_nll` is the bound.

    ``u ~ U[0, 1)^D`` (uniform, log-det 0) or, with ``noise``, ``u ~ q(u | x)`` learned jointly
    with the flow (variational; log-det ``-log q(u | x)``). Either way ``log p(v) - log q(u | x)``,
    the flow's log-likelihood of the row, is a one-sample lower bound on ``log P(x)``, the
    probability of the integer row, and training maximizes it.

    Arguments:
        enabled: Whether rows are dequantized at all (off in the served copy).
        noise: A :class:`~flowserve.models.image.VariationalDequantization` over ``shape``, or
            None for uniform noise.
        shape: The event shape ``noise`` takes (rows are flat pixels).

    References:
        | A note on the evaluation of generative models (Theis et al., 2016)
        | https://arxiv.org/abs/1511.01844
        | Flow++: Improving Flow-Based Generative Models with Variational Dequantization and
        | Architecture Design (Ho et al., 2019)
        | https://arxiv.org/abs/1902.00275
    """

    def __init__(
        self,
        enabled: bool = True,
        noise: torch.nn.Module | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if (noise is None) != (shape is None):
            raise ValueError("variational dequantization needs both noise and its event shape")
        self.enabled = bool(enabled)
        self.sampling = False  # dequantize in evaluation mode too (for the bound)
        self.noise = noise
        self.shape = None if shape is None else tuple(int(v) for v in shape)

    @property
    def kind(self) -> str:
        """``uniform`` or ``variational``, as the manifest records it."""
        return "uniform" if self.noise is None else "variational"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not (self.enabled and (self.training or self.sampling)):
            return x, x.new_zeros(x.shape[0])
        if self.noise is None:
            return x + (torch.rand_like(x) - 0.5), x.new_zeros(x.shape[0])
        assert self.shape is not None
        v, log_q = self.noise(x.reshape(-1, *self.shape))  # v = x + u, u in (0, 1)
        return v.reshape(x.shape) - 0.5, -log_q

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z, z.new_zeros(z.shape[0])


def preprocess_for(
    kind: DataKind,
    mean: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    *,
    power: PowerSpec | None = None,
    dequantization: str = "uniform",
    shape: Any = None,
    num_values: int | None = None,
) -> Transform | None:
    """The flow's ``preprocess`` for data of ``kind`` (``mean``/``scale``, after ``power``'s
    transform when given, for ``real``; for ``image``, ``dequantization`` ``uniform`` or
    ``variational``, the latter over the image ``shape`` with ``num_values`` levels)."""
    if kind == "real":
        assert mean is not None and scale is not None, "real data needs its standardization"
        return Standardize(torch.from_numpy(mean), torch.from_numpy(scale), power)
    if kind == "unit_vector":
        return OnUnitSphere()
    if kind == "image":
        if dequantization == "uniform":
            return Dequantize()
        if dequantization != "variational":
            raise ValueError(
                f"dequantization must be uniform or variational, got {dequantization!r}"
            )
        from flowserve.models.image import VariationalDequantization

        assert shape is not None and num_values is not None, "variational needs shape and levels"
        event = tuple(int(v) for v in shape)
        return Dequantize(noise=VariationalDequantization(event, num_values), shape=event)
    return None


def served_flow(flow: Flow) -> Flow:
    """A copy of ``flow`` as it is exported and served: dequantization switched off."""
    served = copy.deepcopy(flow)
    if isinstance(served.preprocess, Dequantize):
        served.preprocess.enabled = False
    return served


def manifest_preprocessing(
    kind: DataKind,
    nan_policy: Any,
    mean: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    num_values: int | None = None,
    dequantization: str = "uniform",
    power: PowerSpec | None = None,
) -> Preprocessing:
    """The manifest's :class:`~flowserve.artifact.Preprocessing` for data of ``kind``."""
    return Preprocessing(
        standardize_mean=None if mean is None else mean.tolist(),
        standardize_scale=None if scale is None else scale.tolist(),
        power_transform=power_transform_of(power),
        dequantization=dequantization if kind == "image" else None,  # type: ignore[arg-type]
        nan_policy=nan_policy,
        data_kind=kind,
        manifold_tolerance=UNIT_NORM_TOLERANCE if kind == "unit_vector" else None,
        num_values=num_values if kind == "image" else None,
    )


def power_transform_of(power: PowerSpec | None) -> PowerTransform | None:
    """The manifest's record of ``power`` (None when no column is transformed)."""
    if power is None or not power.active:
        return None
    return PowerTransform(**{name: getattr(power, name).tolist() for name in POWER_FIELDS})


def image_shape(dim: int) -> list[int]:
    """``[C, H, W]`` for flat rows of ``dim`` pixels: one square grey channel, else three
    square colour channels; raises ``ValueError`` when neither fits (give the shape)."""
    for channels in (1, 3):
        side = math.isqrt(dim // channels) if dim % channels == 0 else 0
        if side > 0 and channels * side * side == dim:
            return [channels, side, side]
    raise ValueError(
        f"cannot infer an image shape from {dim} pixels per row (not C x S x S with C = 1 or "
        "3); give it, e.g. --param shape=[1,28,28]"
    )


@torch.no_grad()
def dequantized_nll(
    flow: Flow, rows: np.ndarray, draws: int = 4, seed: int = 0, batch: int = 1024
) -> float:
    """``-E_u log p(x + u - 1/2)`` averaged over rows and ``draws`` seeded noise draws: an upper
    bound (up to Monte Carlo error) on the discrete NLL ``-log P(x)``, nats per row."""
    # The flow's own log-likelihood with dequantization on in evaluation mode is the bound:
    # log p(v) - log q(u | x), with log q = 0 for uniform noise. Seeded, and the caller's
    # generator left as it was.
    bound = copy.deepcopy(flow).eval().cpu()
    if bound.preprocess is None:  # a bare image flow: uniform noise
        bound.set_preprocess(Dequantize())
    if not isinstance(bound.preprocess, Dequantize):
        raise ValueError("dequantized_nll needs an image flow, whose preprocess dequantizes")
    bound.preprocess.enabled, bound.preprocess.sampling = True, True
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(rows), batch):
            x = torch.from_numpy(
                np.ascontiguousarray(rows[start : start + batch], dtype=np.float32)
            )
            for _ in range(draws):
                total += float(-bound.log_prob(x).double().sum())
    return total / max(len(rows) * draws, 1)


def image_hparams(hparams: dict[str, Any], dim: int, num_values: int | None) -> dict[str, Any]:
    """An image family's options for flat rows of ``dim`` pixels: the shape (inferred unless
    given), ``levels`` (unless given, the most of 3, 2 and 1 that divide the height and width),
    ``num_values`` (the data's unless given; never fewer) and ``flat=True``."""
    out = dict(hparams)
    out.setdefault("shape", image_shape(dim))
    # As many scales as the image allows, up to 3 (Glow's on 32x32): on 8x8 digits 3 scales
    # beat 2 by 0.04-0.05 bits/dim in two paired runs (benchmarks/README).
    shape = out["shape"]
    if "levels" not in out and isinstance(shape, list | tuple) and len(shape) == 3:
        h, w = int(shape[1]), int(shape[2])  # a malformed shape is the builder's to refuse
        out["levels"] = next((k for k in (3, 2) if h % 2**k == 0 and w % 2**k == 0), 1)
    if num_values is not None:
        given = int(out.setdefault("num_values", num_values))
        if given < num_values:
            raise ValueError(f"num_values={given}, but the data hold levels up to {num_values - 1}")
    out["flat"] = True
    return out
