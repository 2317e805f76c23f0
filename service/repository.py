"""The model repository: every ``<root>/<name>/<version>/`` artifact, loaded and warmed up.

A :class:`ModelSnapshot` is immutable: a request resolves its model from the snapshot current when
it started and keeps that reference, so a :meth:`ModelRepository.reload` (which builds a new
snapshot and swaps it in atomically) never changes the version under an in-flight request.
Unchanged version directories are reused, not reloaded. Reloads are transactional per version:
a new or changed version is validated in full (manifest, containment, checksums, sessions, warm-up)
before it replaces anything. A broken new version is listed as ``failed``; a broken *change* to a
serving version keeps the loaded model serving (as Triton does) and records the failed attempt in
``reload_error``, and the next reload that sees different files tries again. A name's default is
its newest *ready* version. Files that vanish while a reload scans them never fail the reload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from flowserve.artifact import ArtifactError, Manifest, load_manifest

from .errors import ModelNotFound, ModelUnavailable, VersionNotFound
from .runtime import FlowModel, load_flow_model

__all__ = ["ModelRepository", "ModelSnapshot", "ModelVersion", "scan_root"]

log = logging.getLogger("flowserve.service.repository")

# (relative path, size, mtime_ns) of every file in a version directory: cheap change detection.
Fingerprint = tuple[tuple[str, int, int], ...]
PREFERRED_DEFAULT = "sensors"
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True, eq=False)
class ModelVersion:
    """One version directory: loaded (``status == "ready"``) or refused (``error`` says why)."""

    name: str
    version: int
    directory: Path
    status: Literal["ready", "failed"]
    fingerprint: Fingerprint
    model: FlowModel | None = None
    manifest: Manifest | None = None
    error: str | None = None
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    reload_error: str | None = None  # the last failed attempt to replace this loaded version
    reload_failed_at: datetime | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"


@dataclass(frozen=True)
class ModelSnapshot:
    """An immutable view of the repository at one reload."""

    models: Mapping[str, Mapping[int, ModelVersion]]
    default_name: str | None
    generation: int = 0

    def names(self) -> list[str]:
        return sorted(self.models)

    def default_version(self, name: str) -> int | None:
        """The newest ready version of ``name`` (None when none is ready)."""
        ready = [v for v, mv in self.models.get(name, {}).items() if mv.ready]
        return max(ready) if ready else None

    def ready_versions(self) -> list[ModelVersion]:
        return [mv for vs in self.models.values() for mv in vs.values() if mv.ready]

    def failed_versions(self) -> list[ModelVersion]:
        return [mv for vs in self.models.values() for mv in vs.values() if not mv.ready]

    def resolve(self, name: str | None = None, version: int | str | None = None) -> ModelVersion:
        """The ready version a request addresses; raises the matching API error otherwise."""
        if name is None:
            name = self.default_name
            if name is None:
                raise ModelNotFound("no default model: the model repository is empty")
        versions = self.models.get(name)
        if versions is None:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model '{name}' not found (models: {known})", model=name)
        if version is None:
            v = self.default_version(name)
            if v is None:
                raise ModelUnavailable(
                    f"model '{name}' has no version that loaded successfully "
                    "(see GET /models/{name} for the load errors)".replace("{name}", name),
                    model=name,
                )
            return versions[v]
        # Canonical decimal only: "+1", " 1" and "01" name no version.
        v = int(version) if isinstance(version, int) or _DECIMAL.fullmatch(version) else -1
        mv = versions.get(v)
        if mv is None:
            known = ", ".join(str(k) for k in sorted(versions))
            raise VersionNotFound(
                f"model '{name}' has no version '{version}' (versions: {known})",
                model=name,
                version=str(version),
            )
        if not mv.ready:
            raise ModelUnavailable(
                f"model '{name}' version {v} failed to load: {mv.error}", model=name, version=v
            )
        return mv


def _fingerprint(directory: Path) -> Fingerprint | None:
    """The directory's fingerprint, or None when it vanished while being scanned. A file that
    vanishes mid-scan is left out: the fingerprint then differs and the next scan looks again."""
    items = []
    try:
        paths = sorted(directory.rglob("*"))
    except OSError:
        return None
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            items.append((str(p.relative_to(directory)), st.st_size, st.st_mtime_ns))
    return tuple(items) if directory.is_dir() else None


def _listdir(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError:  # removed (or made unreadable) while scanning
        return []


def scan_root(root: Path) -> dict[tuple[str, int], Path]:
    """``(name, version) -> directory`` of every ``<root>/<name>/<int>/`` (hidden names skipped)."""
    found: dict[tuple[str, int], Path] = {}
    root = Path(root)
    for name_dir in _listdir(root):
        if name_dir.name.startswith((".", "_")) or not name_dir.is_dir():
            continue
        for vdir in _listdir(name_dir):
            if vdir.name.isdigit() and vdir.is_dir():
                found[(name_dir.name, int(vdir.name))] = vdir
    return found


class ModelRepository:
    """Loads a model root and keeps an atomically swapped :class:`ModelSnapshot`.

    Arguments:
        root: the model repository directory (``<root>/<name>/<version>/``).
        default_model: the name the unprefixed routes serve (default: ``sensors`` if present,
            else the first name in sorted order).
        prefer: ``"onnx"`` or ``"torchscript"`` (see :func:`load_flow_model`).
        on_load_failure: called as ``(name, version, error)`` for every refused artifact.
    """

    def __init__(
        self,
        root: Path,
        *,
        default_model: str | None = None,
        prefer: Literal["onnx", "torchscript"] = "onnx",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        on_load_failure: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.default_model = default_model
        self.prefer = prefer
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.on_load_failure = on_load_failure
        self._snapshot = ModelSnapshot(MappingProxyType({}), None, 0)
        self._lock = threading.Lock()
        self._reloads_started = 0  # lets concurrent reload calls share one scan
        self.loaded = False  # True once the first reload finished (readiness)

    @property
    def snapshot(self) -> ModelSnapshot:
        return self._snapshot

    def _load(self, name: str, version: int, directory: Path, fp: Fingerprint) -> ModelVersion:
        manifest = None
        try:
            manifest = load_manifest(directory)
            if manifest.name != name or manifest.version != version:
                raise ArtifactError(
                    f"{directory}: manifest says {manifest.name}/{manifest.version}, but the "
                    f"directory is {name}/{version}"
                )
            model = load_flow_model(
                directory,
                prefer=self.prefer,
                intra_op_threads=self.intra_op_threads,
                inter_op_threads=self.inter_op_threads,
            )
        except Exception as e:  # any failure refuses this artifact only
            reason = str(e) if isinstance(e, ArtifactError) else f"{type(e).__name__}: {e}"
            log.error("refusing artifact %s/%s at %s: %s", name, version, directory, reason)
            if self.on_load_failure is not None:
                self.on_load_failure(name, version, reason)
            return ModelVersion(name, version, directory, "failed", fp, None, manifest, reason)
        log.info(
            "loaded %s/%s (%s, dim %d, %s)",
            name,
            version,
            model.manifest.family,
            model.dim,
            model.runtime,
        )
        return ModelVersion(name, version, directory, "ready", fp, model, model.manifest)

    def fingerprints(self) -> dict[tuple[str, int], Fingerprint]:
        found = {key: _fingerprint(d) for key, d in scan_root(self.root).items()}
        return {key: fp for key, fp in found.items() if fp is not None}

    def changed(self) -> bool:
        """Whether the root differs from the current snapshot (new, removed or edited files)."""
        current = {
            (mv.name, mv.version): mv.fingerprint
            for vs in self._snapshot.models.values()
            for mv in vs.values()
        }
        return self.fingerprints() != current

    def _replace(self, prev: ModelVersion | None, candidate: ModelVersion) -> ModelVersion:
        """What serves after loading ``candidate`` over ``prev``: the candidate when it loaded
        (or nothing was serving), else the loaded ``prev``, marked with the failed attempt."""
        if candidate.ready or prev is None or not prev.ready:
            return candidate
        log.error(
            "reloading %s/%s failed; keeping the loaded version serving: %s",
            prev.name,
            prev.version,
            candidate.error,
        )
        return dataclasses.replace(
            prev,
            fingerprint=candidate.fingerprint,  # retry only once the files change again
            reload_error=candidate.error,
            reload_failed_at=candidate.loaded_at,
        )

    def reload(self) -> ModelSnapshot:
        """Rescan the root, load new or changed versions, and swap in the new snapshot.

        Calls that arrive while a reload runs wait for it and then share the next one, so a
        flood of reload requests costs at most two scans at a time.
        """
        arrived = self._reloads_started
        with self._lock:
            if self._reloads_started > arrived:
                # A scan that began after this call arrived has just finished: it saw the files
                # as they were when the caller asked, so its snapshot answers this call too.
                return self._snapshot
            self._reloads_started += 1
            old = self._snapshot
            models: dict[str, dict[int, ModelVersion]] = {}
            for (name, version), directory in sorted(scan_root(self.root).items()):
                fp = _fingerprint(directory)
                if fp is None:
                    continue  # removed while scanning
                prev = old.models.get(name, {}).get(version)
                if prev is not None and prev.fingerprint == fp:
                    mv = prev  # unchanged: keep the loaded sessions
                else:
                    mv = self._replace(prev, self._load(name, version, directory, fp))
                models.setdefault(name, {})[version] = mv
            if not models:
                log.warning("model root %s holds no <name>/<version>/ artifacts", self.root)
            frozen = MappingProxyType(
                {n: MappingProxyType(dict(sorted(vs.items()))) for n, vs in sorted(models.items())}
            )
            self._snapshot = ModelSnapshot(frozen, self._pick_default(frozen), old.generation + 1)
            self.loaded = True
            return self._snapshot

    def _pick_default(self, models: Mapping[str, Mapping[int, ModelVersion]]) -> str | None:
        if self.default_model:
            return self.default_model
        if PREFERRED_DEFAULT in models:
            return PREFERRED_DEFAULT
        return next(iter(sorted(models)), None)

    async def watch(self, interval_s: float) -> None:
        """Poll the root every ``interval_s`` seconds and reload on change (runs until
        cancelled); file-system work happens in a thread so the event loop never blocks."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await asyncio.to_thread(self.changed):
                    log.info("model root %s changed; reloading", self.root)
                    await asyncio.to_thread(self.reload)
            except Exception:  # keep watching; the old snapshot keeps serving
                log.exception("reloading %s failed", self.root)
