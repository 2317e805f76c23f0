"""``flowserve serve`` flags and the settings docs, both generated from ``ServiceSettings``."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from flowserve.service import cli as serve_cli
from flowserve.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent

# Flags that scripts, tests, benchmarks and the README already use: they must keep working.
EXISTING_FLAGS = {
    "--models": "model_root",
    "--default-model": "default_model",
    "--host": "host",
    "--port": "port",
    "--workers": "workers",
    "--api-key-file": "api_key_file",
    "--admin-key-file": "admin_key_file",
    "--max-rows": "max_rows",
    "--max-body-bytes": "max_body_bytes",
    "--max-sample": "max_sample",
    "--ort-intra-op-threads": "ort_intra_op_threads",
    "--ort-inter-op-threads": "ort_inter_op_threads",
    "--inference-threads": "inference_threads",
    "--inline-max-rows": "inline_max_rows",
    "--inline-max-ms": "inline_max_ms",
    "--runtime": "runtime",
    "--batching": "batching",
    "--max-batch-size": "max_batch_size",
    "--max-batch-delay-ms": "max_batch_delay_ms",
    "--watch": "watch",
    "--log-level": "log_level",
    "--access-log": "access_log",
    "--log-format": "log_format",
    "--tracing": "tracing",
    "--max-in-flight": "max_in_flight",
    "--drain-s": "drain_s",
    "--shutdown-timeout-s": "shutdown_timeout_s",
}


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    return parser.parse_args(list(argv))


def _other_value(flag: serve_cli.SettingFlag, tmp_path: Path) -> tuple[list[str], object]:
    """Arguments that set ``flag`` to a value other than its default, and that value."""
    if flag.kind is bool:
        return [flag.flag if not flag.default else "--no-" + flag.flag[2:]], not flag.default
    if flag.choices:
        value = next(c for c in flag.choices if c != flag.default)
        return [flag.flag, value], value
    if flag.kind in (int, float):
        value = flag.kind(flag.default) + 1  # type: ignore[call-overload]
        return [flag.flag, str(value)], value
    if flag.field.endswith("_file"):
        path = tmp_path / f"{flag.field}.txt"
        path.write_text(f"key-for-{flag.field}\n")
        return [flag.flag, str(path)], path
    value = "other" if flag.field != "model_root" else str(tmp_path)
    return [flag.flag, value], Path(value) if flag.field == "model_root" else value


def test_every_setting_is_described_and_has_one_flag() -> None:
    flags = serve_cli.setting_flags()
    assert [f.field for f in flags] == list(ServiceSettings.model_fields)
    assert len({f.flag for f in flags}) == len(flags)
    for f in flags:
        assert f.help, f"{f.field} has no description: it is its --help line and docs row"
        assert f.env == f"FLOWSERVE_{f.field.upper()}"


def test_existing_flag_names_keep_working() -> None:
    by_flag = {f.flag: f.field for f in serve_cli.setting_flags() if f.on_argv}
    assert {flag: by_flag.get(flag) for flag in EXISTING_FLAGS} == EXISTING_FLAGS
    # the two settings the hand-kept mirror had missed
    assert {"--max-temperature", "--watch-interval-s"} <= set(by_flag)


def test_every_flag_sets_its_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServiceSettings.model_fields:
        monkeypatch.delenv(f"FLOWSERVE_{name.upper()}", raising=False)
    for flag in serve_cli.setting_flags():
        if not flag.on_argv:
            continue
        argv, expected = _other_value(flag, tmp_path)
        settings = serve_cli.settings_from_args(_parse(*argv))
        assert getattr(settings, flag.field) == expected, flag.flag


def test_unset_flags_leave_the_environment_in_charge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSERVE_MAX_TEMPERATURE", "3.5")
    monkeypatch.setenv("FLOWSERVE_WATCH", "true")
    settings = serve_cli.settings_from_args(_parse("--port", "9001"))
    assert (settings.max_temperature, settings.watch, settings.port) == (3.5, True, 9001)
    assert serve_cli.settings_from_args(_parse("--no-watch")).watch is False


@pytest.mark.parametrize("flag", ["--api-keys", "--admin-keys"])
def test_keys_on_argv_are_refused(
    flag: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR"):
        assert serve_cli.run(_parse(flag, "k1", "--models", str(tmp_path))) == 2
    assert f"{flag} is not accepted" in caplog.text and "visible to every user" in caplog.text


def test_help_names_every_flag_and_its_environment_variable() -> None:
    parser = argparse.ArgumentParser(prog="flowserve serve")
    serve_cli.configure(parser)
    text = " ".join(parser.format_help().split())  # undo argparse's line wrapping
    for f in serve_cli.setting_flags():
        if f.on_argv:
            assert f.flag in text and f.env in text, f.flag
        else:
            assert f.flag not in text  # refused, so not offered


def test_docs_settings_table_is_current() -> None:
    spec = importlib.util.spec_from_file_location("api_docs", ROOT / "scripts/api_docs.py")
    assert spec is not None and spec.loader is not None
    api_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_docs)
    text = (ROOT / "docs/api.md").read_text()
    assert api_docs.update(text) == text, "run: python scripts/api_docs.py"


def test_docs_name_only_real_settings() -> None:
    # Every FLOWSERVE_* variable the README and docs mention, and every name in the README's
    # settings paragraph, must be a setting (catches a rename that left the docs behind).
    names = {name.upper() for name in ServiceSettings.model_fields}
    compose_only = {"PUBLISHED_PORT"}  # docker-compose.yml's port mapping, not a setting
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for var in re.findall(r"FLOWSERVE_([A-Z][A-Z_]*[A-Z])", doc.read_text()):
            assert var in names | compose_only, f"{doc.name}: FLOWSERVE_{var} is no setting"
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Settings come from") :].split("\n\n")[0]
    listed = set(re.findall(r"`([A-Z][A-Z_]+)`", paragraph))
    assert listed and listed <= names, listed - names
