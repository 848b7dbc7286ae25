"""Settings: .env.example documents every setting; precedence; prod refuses unsafe defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.settings import (
    ENV_EXAMPLE_FILE,
    PROJECT_ROOT,
    Settings,
    settings_env_names,
)


def example_keys() -> list[str]:
    keys = []
    for line in ENV_EXAMPLE_FILE.read_text().splitlines():
        match = re.match(r"^([A-Z_][A-Z0-9_]*)=", line)
        if match:
            keys.append(match.group(1))
    return keys


def test_env_example_lists_exactly_the_settings() -> None:
    keys = example_keys()
    assert len(keys) == len(set(keys)), "a key appears twice in .env.example"
    assert set(keys) == settings_env_names()


def test_every_env_example_setting_has_a_comment() -> None:
    """Each setting, or each small group of settings, sits under a comment line."""
    lines = ENV_EXAMPLE_FILE.read_text().splitlines()
    setting = re.compile(r"^[A-Z_][A-Z0-9_]*=")
    for index, line in enumerate(lines):
        if setting.match(line):
            above = index - 1
            while above >= 0 and setting.match(lines[above]):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), (
                f"{line.split('=')[0]} has no comment above it"
            )


# Differences left as they are for now, listed exactly so that any other fails and so that
# mending one fails here too (then delete its line). The bootstrap admin's password: the
# example (and README) give `admin-change-me`, the setting's own default is "" (no admin);
# the gateway always reads the example, so its effective default is the example's.
KNOWN_DIFFERENCES = {"DISTLM_ADMIN_PASSWORD": ("admin-change-me", "")}


def test_env_example_values_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value in .env.example, read as the settings read it, equals that setting's
    default without any file; and no setting is missing from the example."""
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)
    env_name = {
        field: str(info.validation_alias.choices[0])  # type: ignore[union-attr]
        for field, info in Settings.model_fields.items()
    }
    missing = set(env_name.values()) - set(example_keys())
    assert not missing, f"settings missing from .env.example: {sorted(missing)}"
    from_example = Settings(_env_file=ENV_EXAMPLE_FILE).model_dump()  # type: ignore[call-arg]
    defaults = Settings(_env_file=None).model_dump()  # type: ignore[call-arg]
    differing = {
        env_name[field]: (from_example[field], defaults[field])
        for field in defaults
        if from_example[field] != defaults[field]
    }
    assert differing == KNOWN_DIFFERENCES, f"(.env.example, default) differ: {differing}"


def test_environment_overrides_dotenv_which_overrides_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text("DISTLM_PORT=9001\nNODE_TIMEOUT=17\n")
    files = (ENV_EXAMPLE_FILE, dotenv)
    assert Settings(_env_file=files).port == 9001  # type: ignore[call-arg]
    assert Settings(_env_file=files).node_timeout == 17  # type: ignore[call-arg]
    monkeypatch.setenv("DISTLM_PORT", "9002")
    both = Settings(_env_file=files)  # type: ignore[call-arg]
    assert both.port == 9002 and both.node_timeout == 17


def test_prod_refuses_the_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTLM_ENV", "prod")
    monkeypatch.delenv("DISTLM_SECRET_KEY", raising=False)
    with pytest.raises(ValueError, match="DISTLM_SECRET_KEY"):
        Settings(_env_file=ENV_EXAMPLE_FILE)  # type: ignore[call-arg]
    monkeypatch.setenv("DISTLM_SECRET_KEY", "short")
    with pytest.raises(ValueError, match="DISTLM_SECRET_KEY"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_prod_accepts_a_real_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTLM_ENV", "prod")
    monkeypatch.setenv("DISTLM_SECRET_KEY", "k" * 48)
    monkeypatch.setenv("DISTLM_ADMIN_PASSWORD", "a-real-admin-password")
    assert Settings(_env_file=None).env == "prod"  # type: ignore[call-arg]


def test_relative_paths_are_anchored_at_the_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    settings = Settings(_env_file=None, database_url="sqlite:///var/x.db", data_root="var/data")  # type: ignore[call-arg]
    assert settings.database_url == f"sqlite:///{PROJECT_ROOT / 'var' / 'x.db'}"
    assert settings.data_root == PROJECT_ROOT / "var" / "data"


def test_plain_postgres_urls_use_psycopg3() -> None:
    settings = Settings(_env_file=None, database_url="postgresql://u@h/db")  # type: ignore[call-arg]
    assert settings.database_url == "postgresql+psycopg://u@h/db"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTLM_PORT", "not-a-port")
    with pytest.raises(ValueError):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_prod_approves_nodes_by_hand_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 (3): approval hands a node the cluster's keys, so prod never auto-approves
    by default; dev does; an explicit setting wins in both."""
    prod = {
        "DISTLM_ENV": "prod",
        "DISTLM_SECRET_KEY": "k" * 40,
        "DISTLM_ADMIN_PASSWORD": "a-strong-password-for-prod",
    }
    for key, value in prod.items():
        monkeypatch.setenv(key, value)
    assert Settings().node_auto_approve is False
    monkeypatch.setenv("DISTLM_NODE_AUTO_APPROVE", "true")
    assert Settings().node_auto_approve is True
    monkeypatch.setenv("DISTLM_ENV", "dev")
    monkeypatch.delenv("DISTLM_NODE_AUTO_APPROVE")
    assert Settings().node_auto_approve is True
    monkeypatch.setenv("DISTLM_NODE_AUTO_APPROVE", "false")
    assert Settings().node_auto_approve is False
