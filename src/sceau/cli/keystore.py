"""``sceau keystore ...``: init, status, rotate, retire, migrate (file and PKCS#11 backends).

Every change is audited through an admin session (its own audit node, ``cli1``...), so
rotations and retirements appear in the trail like any other administrative act. The
PKCS#11 PIN is never an argument: only the variable or file that holds it (docs/hsm.md).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
import typer

from sceau.admin import admin_session
from sceau.cli.common import DataDir, JsonFlag, config_from, fail, print_json
from sceau.config import CONFIG_FILE, Config
from sceau.errors import ConfigError, InvalidRequest, SceauError
from sceau.keystore import init_keystore, open_keystore
from sceau.keystore.base import KeyPurpose, Keystore, KeystoreSettings
from sceau.provision import KeystoreChoice, check_env_agrees, set_config_values
from sceau.service.runtime import keystore_settings, open_store
from sceau.store import schema
from sceau.store.db import Engines
from sceau.store.keys import count_keys_by_master_version
from sceau.store.leases import list_leases
from sceau.store.writer import Tx
from sceau.vocab import Action

app = typer.Typer(help="Keystore: init, status, rotate, retire, migrate.", no_args_is_help=True)

KEYSTORE_DIR = "keystore"
# What a keystore dir holds once initialized (either backend has jwe.json).
_KEYSTORE_FILES = ("jwe.json", "keystore.json")

Module = Annotated[str | None, typer.Option(
    "--module", help="path of the PKCS#11 module (default $SCEAU_PKCS11_MODULE)")]
Token = Annotated[str | None, typer.Option(
    "--token", help="token label (default $SCEAU_PKCS11_TOKEN)")]
PinEnv = Annotated[str | None, typer.Option(
    "--pin-env", help="NAME of the variable holding the PIN (default SCEAU_PKCS11_PIN)")]
PinFile = Annotated[Path | None, typer.Option(
    "--pin-file", help="file holding the PIN (first line); 0600")]
SigningAlg = Annotated[str | None, typer.Option(
    "--signing-alg", help="EdDSA or ES256 (default: EdDSA where the token has it)")]


# --- helpers ---------------------------------------------------------------------------------


def _has_keystore(path: Path) -> bool:
    return any((path / name).exists() for name in _KEYSTORE_FILES)


def _store_counts(engines: Engines) -> tuple[int, int]:
    """(key records, audit records) in the store."""
    with engines.read.connect() as conn:
        keys = conn.execute(sa.select(sa.func.count()).select_from(schema.keys)).scalar_one()
        records = conn.execute(
            sa.select(sa.func.count()).select_from(schema.audit_records)
        ).scalar_one()
    return int(keys), int(records)


def _running_service_nodes(engines: Engines) -> list[str]:
    """Audit nodes held right now by a service process (admin commands lease ``cli*``)."""
    now = int(time.time())
    with engines.read.connect() as conn:
        leases = list_leases(conn)
    return sorted(node for node, _holder, expires in leases
                  if expires >= now and not node.startswith(("cli", "sweep:")))


def _live_keys(config: Config) -> dict[int, int]:
    engines = open_store(config)
    try:
        with engines.read.connect() as conn:
            return count_keys_by_master_version(conn)
    finally:
        engines.dispose()


def _run_audited(config: Config, action: Action, fn: Any) -> Any:
    """Run ``fn(keystore, tx)`` as one audited change; a refusal is audited and re-raised."""
    with admin_session(config) as session:
        return session.run(action, lambda tx: fn(session.keystore, tx))


def _pkcs11_settings(path: Path, values: dict[str, str], base: KeystoreSettings,
                     signing_alg: str | None = None) -> KeystoreSettings:
    pin_file = values.get("keystore.pin_file")
    return KeystoreSettings(
        path,
        backend="pkcs11",
        passphrase_env=base.passphrase_env,
        pkcs11_module=values["keystore.pkcs11_module"],
        pkcs11_token=values["keystore.pkcs11_token"],
        pin_env=values.get("keystore.pin_env") or base.pin_env,
        pin_file=Path(pin_file) if pin_file else None,
        pool_size=base.pool_size,
        signing_alg=signing_alg,
    )


# --- init ------------------------------------------------------------------------------------


@app.command("init")
def init(
    pkcs11: Annotated[bool, typer.Option(
        "--pkcs11/--file", help="keys in a PKCS#11 token, or in DATA_DIR/keystore")] = False,
    module: Module = None,
    token: Token = None,
    pin_env: PinEnv = None,
    pin_file: PinFile = None,
    signing_alg: SigningAlg = None,
    data_dir: DataDir = None,
) -> None:
    """Create the keystore of a data dir that has none yet, and record it in sceau.toml.

    For a data dir assembled without `sceau init` (sceau.toml written by configuration
    management, `sceau db upgrade` run): refuses when DATA_DIR/keystore already holds a
    keystore, or when the store already holds keys or audit records, which were made under
    another keystore (restore that one instead).
    """
    config = config_from(data_dir)
    if not (config.data_dir / CONFIG_FILE).is_file():
        fail(f"{config.data_dir / CONFIG_FILE} not found",
             "create an installation with `sceau init`")
    path = config.data_dir / KEYSTORE_DIR
    if _has_keystore(path):
        fail(f"{path} already holds a keystore",
             "see `sceau keystore status`; `sceau keystore migrate` moves it to a token")
    engines = open_store(config)
    try:
        keys, records = _store_counts(engines)
    finally:
        engines.dispose()
    if keys or records:
        fail(f"the store already holds {keys} key record(s) and {records} audit record(s), "
             "made under another keystore; a new one could not derive or verify them",
             "restore DATA_DIR/keystore (or the token) from its backup instead")
    choice = KeystoreChoice(backend="pkcs11" if pkcs11 else "file", pkcs11_module=module,
                            pkcs11_token=token, pin_env=pin_env, pin_file=pin_file,
                            signing_alg=signing_alg)
    values = choice.config_values(config)
    check_env_agrees(values)
    settings = dataclasses.replace(
        keystore_settings(config_from(config.data_dir, values)), signing_alg=signing_alg
    )
    init_keystore(settings)
    set_config_values(config.data_dir, values)

    def record(_ks: Keystore, tx: Tx) -> None:
        tx.ctx.details = {"what": "keystore_init", "backend": settings.backend,
                          "token": settings.pkcs11_token}

    _run_audited(config_from(config.data_dir), Action.SERVICE_INIT, record)
    where = f"token {settings.pkcs11_token!r}" if pkcs11 else str(path)
    typer.echo(f"keystore created ({settings.backend}, {where}); recorded in "
               f"{config.data_dir / CONFIG_FILE}")


# --- status ----------------------------------------------------------------------------------


def keystore_report(config: Config) -> dict[str, Any]:
    """What ``sceau keystore status`` shows: objects, and live keys per master version."""
    settings = keystore_settings(config)
    with open_keystore(settings) as ks:
        objects = ks.status()
    live = _live_keys(config)
    held: set[int] = set()
    for row in objects:
        if row["kind"] == "master":
            row["live_keys"] = live.get(int(row["version"]), 0)
            if not row["retired"]:
                held.add(int(row["version"]))
    report: dict[str, Any] = {
        "backend": settings.backend,
        "objects": objects,
        "live_keys_by_master_version": {str(v): n for v, n in sorted(live.items())},
        # Keys whose master version this keystore does not hold can never be decrypted.
        "unavailable_master_versions": sorted(v for v in live if v not in held),
    }
    if settings.backend == "pkcs11":
        report["module"] = settings.pkcs11_module
        report["token"] = settings.pkcs11_token
    return report


@app.command("status")
def status(
    as_json: JsonFlag = False,
    data_dir: DataDir = None,
) -> None:
    """List the keystore's objects (no secrets) and how many live keys use each master version."""
    report = keystore_report(config_from(data_dir))
    if as_json:
        print_json(report)
        return
    where = f" (token {report['token']!r}, {report['module']})" if "token" in report else ""
    typer.echo(f"backend: {report['backend']}{where}")
    typer.echo(f"{'label':<24} {'kind':<9} {'ver':>4} {'state':<8} {'alg':<13} "
               f"{'live keys':>9}  kid")
    for row in report["objects"]:
        state = "retired" if row["retired"] else ("current" if row["current"] else "old")
        live = str(row["live_keys"]) if "live_keys" in row else "-"
        typer.echo(f"{row['label']:<24} {row['kind']:<9} {row['version']:>4} {state:<8} "
                   f"{row.get('alg') or '-':<13} {live:>9}  {row['kid'] or '-'}")
    for version in report["unavailable_master_versions"]:
        count = report["live_keys_by_master_version"][str(version)]
        typer.echo(f"warning: {count} live key(s) use master version {version}, which this "
                   "keystore does not hold: they cannot be decrypted", err=True)


# --- rotate and retire -----------------------------------------------------------------------


def rotate_master(config: Config) -> int:
    """Audited: create master version N+1; new keys use it, existing keys keep theirs."""

    def fn(ks: Keystore, tx: Tx) -> int:
        tx.ctx.details = {"what": "master"}
        version = ks.rotate_master()
        tx.ctx.details = {"what": "master", "new_version": version}
        return version

    result: int = _run_audited(config, Action.KEYSTORE_ROTATE, fn)
    return result


def rotate_signing(config: Config, purpose: KeyPurpose) -> dict[str, Any]:
    """Audited: a new current signing key for ``purpose``; older kids stay in the JWKS."""

    def fn(ks: Keystore, tx: Tx) -> dict[str, Any]:
        tx.ctx.details = {"what": purpose.value}
        info = ks.rotate_signing(purpose)
        tx.ctx.details = {"what": purpose.value, "new_version": info.version,
                          "new_kid": info.kid, "alg": info.alg}
        return dict(tx.ctx.details)

    result: dict[str, Any] = _run_audited(config, Action.KEYSTORE_ROTATE, fn)
    return result


def retire_master(config: Config, version: int) -> None:
    """Audited: destroy master version ``version`` once no live key uses it.

    The count is read in the same transaction as the audit record. Refused for the current
    version and for a version any live (not destroyed) key still uses: those keys would
    become undecryptable.
    """

    def fn(ks: Keystore, tx: Tx) -> None:
        tx.ctx.details = {"what": "retire_master", "version": version}
        if version not in ks.master_versions():
            raise InvalidRequest(f"master version {version} is not a usable version of this "
                                 "keystore (see `sceau keystore status`)")
        if version == ks.current_master_version():
            raise InvalidRequest(f"master version {version} is the current one; "
                                 "rotate first (`sceau keystore rotate --master`)")
        live = count_keys_by_master_version(tx.conn).get(version, 0)
        if live:
            tx.ctx.details["live_keys"] = live
            raise InvalidRequest(f"master version {version} is still used by {live} live "
                                 "key(s); destroy or re-encrypt them first")
        ks.retire_master(version)

    _run_audited(config, Action.KEYSTORE_ROTATE, fn)


@app.command("rotate")
def rotate(
    master: Annotated[bool, typer.Option("--master", help="new master key version")] = False,
    audit: Annotated[bool, typer.Option("--audit", help="new audit signing key")] = False,
    response: Annotated[bool, typer.Option("--response", help="new response signing key")] = False,
    data_dir: DataDir = None,
) -> None:
    """Rotate the master key and/or the signing keys (audited). Running servers follow.

    The file backend's servers see the change at their next call; pkcs11 servers within 10
    seconds (or at once for a derivation naming the new version).
    """
    if not (master or audit or response):
        fail("say what to rotate", "--master, --audit and/or --response")
    config = config_from(data_dir)
    if master:
        typer.echo(f"master key: version {rotate_master(config)} is now current")
    for wanted, purpose in ((audit, KeyPurpose.AUDIT), (response, KeyPurpose.RESPONSE)):
        if wanted:
            info = rotate_signing(config, purpose)
            typer.echo(f"{purpose.value} signing key: version {info['new_version']} "
                       f"({info['alg']}, kid {info['new_kid']}) is now current")


@app.command("retire")
def retire(
    master: Annotated[int, typer.Option("--master", help="master version to destroy", min=1)],
    data_dir: DataDir = None,
) -> None:
    """Destroy a master version no live key uses (crypto-shreds what it protected; audited)."""
    retire_master(config_from(data_dir), master)
    typer.echo(f"master key version {master} destroyed")


# --- migrate ---------------------------------------------------------------------------------


def _same_keys(source: Keystore, target: Keystore) -> None:
    """Refuse a migrated keystore that does not derive, seal and sign like its source."""
    if source.master_versions() != target.master_versions():
        raise ConfigError("the token's master versions differ from the file keystore's")
    key_id, seed = bytes(range(16)), bytes(range(32, 64))
    for version in source.master_versions():
        if source.derive(version, key_id, seed) != target.derive(version, key_id, seed):
            raise ConfigError(f"master version {version} derives differently in the token")
    if source.seal(b"sceau/migrate") != target.seal(b"sceau/migrate"):
        raise ConfigError("the token's seal key differs from the file keystore's")
    for purpose in KeyPurpose:
        if ([i.kid for i in source.signing_keys(purpose)]
                != [i.kid for i in target.signing_keys(purpose)]):
            raise ConfigError(f"the token's {purpose.value} signing keys differ")
    if ([k["kid"] for k in source.jwe_public_jwks()]
            != [k["kid"] for k in target.jwe_public_jwks()]):
        raise ConfigError("the JWE keys were not copied")


def migrate_to_pkcs11(config: Config, choice: KeystoreChoice) -> Path:
    """Move a file keystore into an empty token; switch sceau.toml; return the old dir.

    Runs with every service node stopped. The token copy is checked against the file
    keystore (same derivations, seal, kids, JWE key) and self-tested before the data dir is
    switched; the old keystore dir is kept, renamed, for the operator to destroy.
    """
    source = keystore_settings(config)
    if source.backend != "file":
        raise ConfigError(f"this data dir uses the {source.backend} keystore, not file")
    values = choice.config_values(config)
    check_env_agrees(values)
    engines = open_store(config)
    try:
        running = _running_service_nodes(engines)
    finally:
        engines.dispose()
    if running:
        raise ConfigError(f"service node(s) {', '.join(running)} are running on this store; "
                          "stop every node before migrating")
    staging = config.data_dir / f"{KEYSTORE_DIR}.migrating"
    if staging.exists():
        raise ConfigError(f"{staging} exists (an interrupted migration?); inspect and remove it")
    target = _pkcs11_settings(staging, values, source, choice.signing_alg)
    from sceau.keystore.pkcs11 import migrate_file_to_pkcs11

    try:
        migrate_file_to_pkcs11(source, target)
        with open_keystore(source) as old, open_keystore(target) as new:
            _same_keys(old, new)
            new.self_test(forced=config.keystore.selftest_fail)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = config.data_dir / f"{KEYSTORE_DIR}.file-{time.strftime('%Y%m%dT%H%M%S')}"
    os.rename(source.path, backup)
    os.rename(staging, source.path)
    set_config_values(config.data_dir, values)

    def record(ks: Keystore, tx: Tx) -> None:
        tx.ctx.details = {"what": "migrate", "from": "file", "to": "pkcs11",
                          "token": target.pkcs11_token, "master_versions": ks.master_versions()}

    _run_audited(config_from(config.data_dir), Action.KEYSTORE_ROTATE, record)
    return backup


@app.command("migrate")
def migrate(
    to: Annotated[str, typer.Option("--to", help="target backend (pkcs11)")],
    module: Module = None,
    token: Token = None,
    pin_env: PinEnv = None,
    pin_file: PinFile = None,
    data_dir: DataDir = None,
) -> None:
    """Move the file keystore into an empty PKCS#11 token and switch the data dir to it."""
    if to != "pkcs11":
        fail("only --to pkcs11 is supported")
    config = config_from(data_dir)
    choice = KeystoreChoice(backend="pkcs11", pkcs11_module=module, pkcs11_token=token,
                            pin_env=pin_env, pin_file=pin_file)
    try:
        backup = migrate_to_pkcs11(config, choice)
    except SceauError as error:
        fail(error.diagnostics(),
             "if the token now holds some sceau-* objects, re-initialize it before retrying")
    label = token or config.keystore.pkcs11_token
    typer.echo(f"migrated to token {label!r}; {config.data_dir / CONFIG_FILE} now says "
               'backend = "pkcs11"')
    typer.echo(f"the old file keystore is in {backup}: it still holds every key. Once "
               "`sceau keystore status` and /readyz are fine, destroy it and its backups.")
