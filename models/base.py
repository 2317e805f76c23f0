"""The layer contract, the flow, and the family registry.

Every layer is a :class:`Transform`: ``forward(x) -> (z, logabsdet)`` maps data towards the latent
space and ``inverse(z) -> (x, logabsdet)`` maps back; ``logabsdet`` is ``log|det J|`` of the
direction that was called, one value per row (shape ``[batch]``). So for any layer
``forward(x)[1] == -inverse(forward(x)[0])[1]``.

A :class:`Flow` chains transforms over a base distribution and offers ``log_prob``, ``encode``,
``decode`` and ``sample``. :func:`build_flow` builds any registered family from its name and
hyper-parameters: ``build_flow("realnvp", dim=8, layers=8, hidden=128)``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowserve.models.hparams import canonical_hparams
from flowserve.models.power import POWER_FIELDS, PowerSpec, yeo_johnson, yeo_johnson_inverse

__all__ = [
    "FAMILIES",
    "Chain",
    "Flow",
    "Invert",
    "StandardNormal",
    "StandardUniform",
    "Standardize",
    "Transform",
    "build_flow",
    "families",
    "register_family",
    "sum_except_batch",
]


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dimension but the first."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


class Transform(nn.Module):
    """A bijection with an exact log-determinant in both directions (see the module docstring)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class Chain(Transform):
    """Transforms applied in order in ``forward`` and in reverse order in ``inverse``."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ld = t(x)
            total = total + ld
        return x, total

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for t in reversed(self.transforms):
            z, ld = t.inverse(z)
            total = total + ld
        return z, total


class Invert(Transform):
    """The inverse of a transform: swaps its ``forward`` and ``inverse``.

    Arguments:
        transform: The transform to invert.
    """

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform(z)


class Standardize(Transform):
    """Fixed per-feature map ``(x - mean) / scale``: the fitted preprocessing of a model.

    With ``power`` (a :class:`~flowserve.models.power.PowerSpec` whose columns are not all the
    identity), each column first goes through its Yeo-Johnson power transform, and ``mean`` and
    ``scale`` are those of the transformed training rows.
    """

    def __init__(self, mean: Tensor, scale: Tensor, power: PowerSpec | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean).clone())
        self.register_buffer("scale", torch.as_tensor(scale).clone())
        self.has_power = bool(power is not None and power.active)
        for name in POWER_FIELDS if self.has_power else ():
            value = torch.as_tensor(getattr(power, name), dtype=self.mean.dtype)
            self.register_buffer(f"power_{name}", value.clone())

    def power_spec(self) -> PowerSpec | None:
        """The power transform applied before standardizing (None: none)."""
        if not self.has_power:
            return None
        return PowerSpec(
            *(getattr(self, f"power_{n}").detach().cpu().double().numpy() for n in POWER_FIELDS)
        )

    def per_feature(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|dz/dx|)`` per feature, ``[batch, dim]`` each (the map is elementwise)."""
        ld = -torch.log(self.scale).expand_as(x)
        if self.has_power:
            u = (x - self.power_center) / self.power_spread
            x, part = yeo_johnson(u, self.power_lambdas)
            ld = ld + part - torch.log(self.power_spread)
        return (x - self.mean) / self.scale, ld

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.has_power:
            ld = -torch.log(self.scale).sum().expand(x.shape[0])
            return (x - self.mean) / self.scale, ld
        z, ld = self.per_feature(x)
        return z, ld.sum(dim=1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        ld = torch.log(self.scale).sum().expand(z.shape[0])
        x = z * self.scale + self.mean
        if self.has_power:
            u, part = yeo_johnson_inverse(x, self.power_lambdas)
            x = u * self.power_spread + self.power_center
            ld = ld + part.sum(dim=1) + torch.log(self.power_spread).sum()
        return x, ld


class StandardNormal(nn.Module):
    """Independent standard normal over ``event_shape``."""

    kind = "normal"

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.register_buffer("_dummy", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        d = math.prod(self.event_shape)
        return -0.5 * sum_except_batch(z * z) - 0.5 * d * math.log(2 * math.pi)

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        eps = torch.randn(
            (n, *self.event_shape), generator=generator, dtype=self._dummy.dtype, device="cpu"
        )
        return (temperature * eps).to(self._dummy.device)


class StandardUniform(nn.Module):
    """Independent uniform on ``[low, high)`` over ``event_shape`` (angles on circles, tori)."""

    kind = "uniform"

    def __init__(
        self, event_shape: Sequence[int], low: float = -math.pi, high: float = math.pi
    ) -> None:
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.low, self.high = float(low), float(high)
        self.register_buffer("_dummy", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        d = math.prod(self.event_shape)
        inside = ((z >= self.low) & (z < self.high)).reshape(z.shape[0], -1).all(dim=1)
        lp = torch.full_like(inside, -d * math.log(self.high - self.low), dtype=z.dtype)
        return torch.where(inside, lp, torch.full_like(lp, -1e30))

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        u = torch.rand((n, *self.event_shape), generator=generator, dtype=self._dummy.dtype)
        return (self.low + (self.high - self.low) * u).to(self._dummy.device)


class Flow(nn.Module):
    """A normalizing flow: ``transform`` maps data to latents distributed as ``base``.

    ``family`` and ``hparams`` record how :func:`build_flow` made it, so it can be rebuilt.
    ``preprocess`` is an optional fixed transform (e.g. :class:`Standardize`) applied before
    ``transform``; its log-determinant is part of ``log_prob``, so ``log_prob`` is the density of
    the raw data.
    """

    def __init__(
        self,
        transform: Transform,
        base: nn.Module,
        family: str = "custom",
        hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.base = base
        self.preprocess: Transform | None = None
        self.family = family
        self.hparams: dict[str, Any] = dict(hparams or {})

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    def set_preprocess(self, preprocess: Transform | None) -> Flow:
        self.preprocess = preprocess
        return self

    def _to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ld = x.new_zeros(x.shape[0])
        if self.preprocess is not None:
            x, ld = self.preprocess(x)
        z, ld2 = self.transform(x)
        return z, ld + ld2

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x -> (z, log_prob(x))``: one pass gives both, as the exported graph does."""
        z, ld = self._to_latent(x)
        return z, self.base.log_prob(z) + ld

    def log_prob(self, x: Tensor) -> Tensor:
        return self.forward(x)[1]

    def encode(self, x: Tensor) -> Tensor:
        return self._to_latent(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        x, _ = self.transform.inverse(z)
        if self.preprocess is not None:
            x, _ = self.preprocess.inverse(x)
        return x

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None) -> Tensor:
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        z = self.base.sample(n, temperature=temperature, generator=generator)
        return self.decode(z)


FamilyBuilder = Callable[..., Flow]
# The modules whose import registers their families (with @register_family).
FAMILY_MODULES = (
    "autoregressive",
    "continuous",
    "coupling",
    "gaussian",
    "glow",
    "image",
    "manifold",
    "planar",
    "spline",
)


class _Registry(dict[str, FamilyBuilder]):
    """The family registry; reading it first imports every family module, so that importing
    one module of the library (or the torch-free ``flowserve.models`` package) is enough."""

    _loaded = False

    def _load(self) -> None:
        if not _Registry._loaded:
            _Registry._loaded = True
            for name in FAMILY_MODULES:
                importlib.import_module(f"flowserve.models.{name}")

    def __getitem__(self, key: str) -> FamilyBuilder:
        self._load()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._load()
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def get(self, key: str, default: Any = None) -> Any:
        self._load()
        return super().get(key, default)

    def keys(self) -> Any:
        self._load()
        return super().keys()

    def items(self) -> Any:
        self._load()
        return super().items()


FAMILIES: dict[str, FamilyBuilder] = _Registry()


def register_family(name: str) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Register ``builder(**hparams) -> Flow`` under ``name`` (lower case)."""

    def wrap(builder: FamilyBuilder) -> FamilyBuilder:
        key = name.lower()
        if dict.__contains__(FAMILIES, key):  # registering never triggers loading
            raise ValueError(f"flow family {key!r} is registered twice")
        dict.__setitem__(FAMILIES, key, builder)
        return builder

    return wrap


def families() -> list[str]:
    """Names of every registered family."""
    return sorted(FAMILIES)


def build_flow(family: str, **hparams: Any) -> Flow:
    """Build a flow of ``family`` from its hyper-parameters; every family takes ``dim``
    (vector data) or ``shape`` (images) plus its own options, all with defaults, named as in
    :data:`~flowserve.models.hparams.HPARAMS` (old names are still accepted, with a warning)."""
    key = family.lower()
    if key not in FAMILIES:
        raise ValueError(f"unknown flow family {family!r}; known: {', '.join(families())}")
    hparams = canonical_hparams(hparams)
    flow = FAMILIES[key](**hparams)
    flow.family = key
    flow.hparams = dict(hparams)
    return flow
