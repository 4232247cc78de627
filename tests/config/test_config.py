"""The configuration model: sceau.toml plus SCEAU_* variables, validated, typed and frozen."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from sceau.config import CONFIG_FILE, Config, env_name, load_config, render_default_config
from sceau.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _load(data_dir: Path, text: str = "", **env: str) -> Config:
    (data_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
    return load_config(data_dir, env=env)


def _refusal(data_dir: Path, text: str = "", **env: str) -> str:
    with pytest.raises(ConfigError) as refused:
        _load(data_dir, text, **env)
    return refused.value.detail


def _settings() -> list[tuple[str, str, str]]:
    """(dotted name, variable, default as written) of every setting, from the rendered file."""
    found = re.findall(r"^\[(\w+)\]$|^# (\w+) = (.*?)  # \$(\w+)", render_default_config(),
                       flags=re.MULTILINE)
    rows, section = [], ""
    for header, name, default, variable in found:
        if header:
            section = header
        else:
            rows.append((f"{section}.{name}", variable, default))
    return rows


def test_an_unknown_key_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE
    assert _refusal(tmp_path, "[server]\nprot = 8443\n") == f"{path}: unknown setting 'server.prot'"
    assert "unknown setting 'sever'" in _refusal(tmp_path, "[sever]\nport = 8443\n")
    assert "unknown setting 'dke.audiance'" in _refusal(tmp_path, '[dke]\naudiance = "x"\n')
    assert "top-level key 'port' must be a [section]" in _refusal(tmp_path, "port = 8443\n")
    assert "not valid TOML" in _refusal(tmp_path, "[server\n")


@pytest.mark.parametrize(("text", "env", "named"), [
    ('[server]\nport = "eighty"\n', {}, "server.port (from {file})"),
    ("[server]\nworkers = true\n", {}, "server.workers (from {file}): expected an integer"),
    ("[store]\npool_size = 2.0\n", {}, "store.pool_size (from {file}): expected an integer"),
    ("[log]\nlevel = 10\n", {}, "log.level (from {file})"),
    ("", {"SCEAU_PORT": "70000"}, "server.port (from $SCEAU_PORT)"),
    ("", {"SCEAU_DB_POOL_SIZE": "0"}, "store.pool_size (from $SCEAU_DB_POOL_SIZE)"),
    ("", {"SCEAU_TLS_CLIENT_AUTH": "REQUIRED"}, "server.client_auth (from $SCEAU_TLS_CLIENT_AUTH)"),
    ("", {"SCEAU_RATE_LIMIT_PER_APP": "-1"}, "limits.rate_limit_per_app"),
    ("", {"SCEAU_AUDIT_WITNESS_URL": "http://w"}, "audit.witness_url (from $SCEAU_AUDIT_WITNESS"),
    # The stray switches of old are settings like the others now.
    ("", {"SCEAU_DAY_SECONDS": "0"}, "keys.day_seconds (from $SCEAU_DAY_SECONDS)"),
    ("", {"SCEAU_DAY_SECONDS": "86401"}, "keys.day_seconds"),
    ("", {"SCEAU_SWEEP_INTERVAL_S": "soon"}, "keys.sweep_interval_s (from $SCEAU_SWEEP"),
    ("[keys]\nsweep_interval_s = 0.01\n", {}, "keys.sweep_interval_s (from {file})"),
])
def test_a_bad_type_or_range_is_refused_naming_the_setting(
    tmp_path: Path, text: str, env: dict[str, str], named: str
) -> None:
    detail = _refusal(tmp_path, text, **env)
    assert named.format(file=tmp_path / CONFIG_FILE) in detail, detail


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    detail = _refusal(tmp_path, "[server]\nport = 0\nworkers = 0\n")
    assert "server.port" in detail and "server.workers" in detail


def test_the_environment_overrides_the_file_and_options_override_both(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("[server]\nport = 9001\nhost = \"10.0.0.1\"\n")
    assert load_config(tmp_path, env={}).server.port == 9001
    config = load_config(tmp_path, env={"SCEAU_PORT": " 9002 "})
    assert (config.server.port, config.server.host) == (9002, "10.0.0.1")  # the rest stays
    config = load_config(tmp_path, env={"SCEAU_PORT": "9002"}, overrides={"server.port": 9003})
    assert config.server.port == 9003
    assert config.service_id == "https://10.0.0.1:9003"
    with pytest.raises(ConfigError, match=r"server.port \(from option server.port\)"):
        load_config(tmp_path, env={}, overrides={"server.port": 0})


def test_the_configuration_is_frozen(tmp_path: Path) -> None:
    config = _load(tmp_path)
    with pytest.raises(ValidationError, match="frozen"):
        config.server.port = 1
    with pytest.raises(ValidationError, match="frozen"):
        config.server = config.server
    with pytest.raises(ValidationError, match="frozen"):
        config.cse.enabled = True
    assert config.server.port == 8443 and not config.cse.enabled


def test_every_documented_variable_is_read(tmp_path: Path) -> None:
    """Each setting's own SCEAU_* name (not a derived one) reaches it, typed."""
    rows = _settings()
    assert len(rows) > 50
    for dotted, variable, default in rows:
        assert env_name(dotted) == variable
        section, name = dotted.split(".")
        raw = default.strip('"')
        config = load_config(tmp_path, env={variable: raw})
        value = getattr(getattr(config, section), name)
        assert str(value) == raw, dotted
    config = load_config(tmp_path, env={"SCEAU_DB_POOL_SIZE": "3", "SCEAU_KEYSTORE": "pkcs11",
                                        "SCEAU_DAY_SECONDS": "1", "SCEAU_SWEEP_INTERVAL_S": "0.3",
                                        "SCEAU_SELFTEST_FAIL": "sha256"})
    assert (config.store.pool_size, config.keystore.backend) == (3, "pkcs11")
    assert (config.keys.day_seconds, config.keys.sweep_interval_s) == (1, 0.3)
    assert config.keystore.selftest_fail == "sha256"


def test_the_file_sceau_init_writes_holds_every_default(tmp_path: Path) -> None:
    rendered = render_default_config()
    assert tomllib.loads(rendered) == {section: {} for section in tomllib.loads(rendered)}
    every_line_set = re.sub(r"^# (\w+ = )", r"\1", rendered, flags=re.MULTILINE)
    assert _load(tmp_path, every_line_set) == _load(tmp_path, "")


def test_the_documentation_lists_every_setting() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for dotted, variable, _default in _settings():
        assert f"`{dotted}`" in text and f"`{variable}`" in text, dotted
