"""``sceau app ...``: client key generation and application registration."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sceau.cli.common import (
    DataDir,
    JsonFlag,
    config_from,
    fail,
    print_json,
    print_table,
    run_admin,
    sealed_status,
    with_store,
)
from sceau.vocab import AppStatus

if TYPE_CHECKING:
    from sceau.keystore.base import Keystore
    from sceau.store.db import Engines

app = typer.Typer(help="Applications: register, list, enable, disable, rotate keys.",
                  no_args_is_help=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


@app.command("keygen")
def keygen(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="directory for the key files")
    ] = Path("."),
    alg: Annotated[
        str, typer.Option(help="signing algorithm: ES256, EdDSA, PS256, RS256")
    ] = "ES256",
    user: Annotated[str | None, typer.Option(help="default user (sub) for this profile")] = None,
    service_url: Annotated[
        str, typer.Option(help="the service's base URL")
    ] = "https://127.0.0.1:8443",
) -> None:
    """Generate an application's key pairs and a client profile (profile.json, 0600)."""
    from sceau.jose.client import generate_app_keys

    out.mkdir(parents=True, exist_ok=True)
    profile_path = out / "profile.json"
    if profile_path.exists():
        fail(f"{profile_path} exists; refusing to overwrite")
    try:
        sign_priv, sign_pub, enc_priv, enc_pub = generate_app_keys(alg)
    except ValueError as exc:
        fail(str(exc))
    (out / "sign.pub.jwk").write_text(json.dumps(sign_pub, indent=2) + "\n")
    (out / "enc.pub.jwk").write_text(json.dumps(enc_pub, indent=2) + "\n")
    profile = {
        "service_url": service_url,
        "service_id": service_url,
        "app_id": None,
        "kid": sign_pub["kid"],
        "alg": alg,
        "private_jwk": sign_priv,
        "enc_private_jwk": enc_priv,
        "user": user,
        "ca_cert": None,
        "service_jwks": None,
    }
    _write_private(profile_path, json.dumps(profile, indent=2) + "\n")
    typer.echo(f"wrote {profile_path} (private, 0600), {out / 'sign.pub.jwk'}, "
               f"{out / 'enc.pub.jwk'}")
    typer.echo(f"next: sceau app add --name NAME --jwk {out / 'sign.pub.jwk'} "
               f"--enc-jwk {out / 'enc.pub.jwk'} --profile {profile_path}")


def _read_jwk(path: Path, what: str) -> dict[str, object]:
    from sceau import admin

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{what}: cannot read {path}: {exc.strerror}")
    return admin.load_jwk_file(text, what)


@app.command("add")
def add(
    name: Annotated[str, typer.Option("--name", help="application name")],
    jwk: Annotated[Path, typer.Option("--jwk", help="public signing JWK file (with alg)")],
    users: Annotated[
        list[str],
        typer.Option("--users", help="identity or *@domain the app may assert (repeatable; "
                     "required: an app asserts nobody unless told; '*' = every user)"),
    ],
    enc_jwk: Annotated[Path | None, typer.Option("--enc-jwk", help="public encryption JWK")] = None,
    profile: Annotated[
        Path | None,
        typer.Option("--profile", help="client profile to complete with app_id and service keys"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print {\"app_id\": ...}")] = False,
    data_dir: DataDir = None,
) -> None:
    """Register an application."""
    from sceau import admin

    config = config_from(data_dir)
    sign = _read_jwk(jwk, "--jwk")
    enc = _read_jwk(enc_jwk, "--enc-jwk") if enc_jwk else None
    with admin.admin_session(config) as session:
        app_id = admin.add_application(session, name=name, jwk=sign, enc_jwk=enc, users=users)
        jwks = session.keystore.public_jwks()
    if profile is not None:
        data = json.loads(profile.read_text(encoding="utf-8"))
        data.update(
            app_id=app_id,
            service_url=config.service_id,
            service_id=config.service_id,
            ca_cert=str(config.tls_cert.resolve()),
            service_jwks=jwks,
        )
        _write_private(profile, json.dumps(data, indent=2) + "\n")
    if as_json:
        print_json({"app_id": app_id})
    else:
        typer.echo(app_id)


ANY_USER_WARNING = "warning: may assert EVERY user ('*')"


@app.command("list")
def list_apps(
    as_json: JsonFlag = False,
    data_dir: DataDir = None,
) -> None:
    """List registered applications (an app that may assert every user is flagged)."""
    from sceau import admin

    def read(engines: Engines, keystore: Keystore) -> tuple[list[dict[str, Any]], list[str]]:
        with engines.read.connect() as conn:
            admins = admin.active_admins(conn, keystore)
        return admin.list_applications(engines, keystore), admins

    apps, admins = with_store(data_dir, read)
    if len(admins) <= 1:
        # Standing warning (stderr, so --json output stays parseable): with one admin the
        # console offers no gated action, and nobody reviews the host operator's.
        typer.echo(admin.SINGLE_ADMIN_WARNING, err=True)
    if as_json:
        print_json(apps)
        return
    rows = []
    for a in apps:
        users = " ".join(a["users"])
        if a["any_user"]:
            users = f"{users}  [{ANY_USER_WARNING}]"
        keys = " ".join(f"{k['kid']}({k['alg']},{k['status']})" for k in a["keys"])
        rows.append((a["app_id"], a["name"], sealed_status(a), users, keys))
    print_table(("app_id", "name", "status", "users", "keys"), rows)
    for a in apps:
        if a["any_user"]:
            typer.echo(f"{a['app_id']}: {ANY_USER_WARNING}", err=True)


def _set_status(app_id: str, status: AppStatus, data_dir: Path | None) -> None:
    from sceau import admin

    run_admin(data_dir, lambda session: admin.set_application_status(session, app_id, status))
    typer.echo(f"{app_id}: {status}")


@app.command("enable")
def enable(app_id: str, data_dir: DataDir = None) -> None:
    """Enable an application."""
    _set_status(app_id, AppStatus.ENABLED, data_dir)


@app.command("disable")
def disable(app_id: str, data_dir: DataDir = None) -> None:
    """Disable an application: every node refuses its next call."""
    _set_status(app_id, AppStatus.DISABLED, data_dir)


@app.command("set-users")
def set_users(
    app_id: str,
    users: Annotated[
        list[str],
        typer.Option("--users", help="identity or *@domain the app may assert (repeatable); "
                     "replaces the list; '*' = every user"),
    ],
    data_dir: DataDir = None,
) -> None:
    """Replace the users an application may assert."""
    from sceau import admin

    run_admin(data_dir, lambda session: admin.set_application_users(session, app_id, users))
    typer.echo(f"{app_id}: users {' '.join(users)}")


@app.command("add-key")
def add_key(
    app_id: str,
    jwk: Annotated[Path, typer.Option("--jwk", help="public signing JWK file (with alg)")],
    data_dir: DataDir = None,
) -> None:
    """Add a signing key to an application (key rotation)."""
    from sceau import admin

    public = _read_jwk(jwk, "--jwk")
    typer.echo(run_admin(data_dir, lambda session: admin.add_app_key(session, app_id, public)))


@app.command("retire-key")
def retire_key(app_id: str, kid: str, data_dir: DataDir = None) -> None:
    """Retire one signing key of an application."""
    from sceau import admin

    run_admin(data_dir, lambda session: admin.retire_app_key(session, app_id, kid))
    typer.echo(f"{kid}: retired")
