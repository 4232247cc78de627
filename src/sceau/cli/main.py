"""``sceau``: init, serve, applications, encryption, audit, keys, database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sceau.cli import accounts, apps, audit, cse, dke, files, keys, keystore, mail
from sceau.cli.common import DataDir, config_from
from sceau.config import default_data_dir
from sceau.errors import SceauError

cli = typer.Typer(
    name="sceau",
    help="Sceau: data-centric encryption service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: a flag reads as a flag (Rich help shows every flag as "<bool>").
    rich_markup_mode=None,
)
cli.add_typer(apps.app, name="app")
cli.add_typer(accounts.app, name="account")
cli.add_typer(audit.app, name="audit")
cli.add_typer(keys.app, name="key")
cli.add_typer(keystore.app, name="keystore")
cli.add_typer(files.app, name="file")
cli.add_typer(mail.app, name="mail")
cli.add_typer(cse.app, name="cse")
cli.add_typer(dke.app, name="dke")
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
tls_cli = typer.Typer(help="The service's TLS certificate.", no_args_is_help=True)
cli.add_typer(tls_cli, name="tls")


@cli.command()
def init(
    data_dir: DataDir = None,
    keystore: Annotated[str | None, typer.Option(
        help="keystore backend: file or pkcs11 (default $SCEAU_KEYSTORE, else file)")] = None,
    module: Annotated[str | None, typer.Option(
        "--module", help="pkcs11: PKCS#11 module path (default $SCEAU_PKCS11_MODULE)")] = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="pkcs11: token label (default $SCEAU_PKCS11_TOKEN)")] = None,
    pin_env: Annotated[str | None, typer.Option(
        "--pin-env", help="pkcs11: NAME of the variable holding the PIN")] = None,
    pin_file: Annotated[Path | None, typer.Option(
        "--pin-file", help="pkcs11: file holding the PIN (first line)")] = None,
    signing_alg: Annotated[str | None, typer.Option(
        "--signing-alg", help="EdDSA or ES256 (default: EdDSA where the token has it)")] = None,
) -> None:
    """Create a data dir: config, keystore, database, TLS certificate, first admin.

    The PKCS#11 PIN is never an argument: sceau.toml records the variable or file it is read
    from (docs/hsm.md).
    """
    from sceau.provision import KeystoreChoice, initialize

    target = data_dir or default_data_dir()
    choice = KeystoreChoice(backend=keystore, pkcs11_module=module, pkcs11_token=token,
                            pin_env=pin_env, pin_file=pin_file, signing_alg=signing_alg)
    result = initialize(target, keystore=choice)
    backend = config_from(result.data_dir).keystore.backend
    typer.echo(f"initialized {result.data_dir} (keystore: {backend})")
    if result.admin_password:
        typer.echo(f"console admin: {result.admin_user}")
        typer.echo(f"one-time password (shown once, change it at first login): "
                   f"{result.admin_password}")


@cli.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="listen address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="listen port (default 8443)")] = None,
    workers: Annotated[int | None, typer.Option(
        help="worker processes on the one port (default server.workers: one per usable "
             "core); limits such as the connection cap and rate limits apply per worker",
    )] = None,
) -> None:
    """Serve the API and console over HTTPS until SIGTERM."""
    from sceau.service.server import serve as run

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["server.host"] = host
    if port is not None:
        overrides["server.port"] = port
    if workers is not None:
        overrides["server.workers"] = workers
    config = config_from(data_dir, overrides)

    def ready(service_id: str) -> None:
        typer.echo(f"Sceau serving at {service_id}  (console: {service_id}/console/)", err=True)

    run(config, on_ready=ready)


@db_cli.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply pending schema migrations, then seal rows that have no seal yet.

    Sealing trusts the rows as they stand (docs/security.md, "trust on upgrade"): review
    `sceau app list` and the console accounts before upgrading from a version without seals.
    """
    from sceau import admin
    from sceau.auditlog.registry import register_existing_nodes, unlisted_nodes
    from sceau.store.db import create_engines, current_revision, head_revision, upgrade

    config = config_from(data_dir)
    engines = create_engines(config.database_url)
    try:
        before = current_revision(engines.read)
        upgrade(engines)
        typer.echo(f"schema: {before or 'empty'} -> {head_revision()}")
        pending = admin.unsealed_rows(engines)
        unlisted = unlisted_nodes(engines)
    finally:
        engines.dispose()
    if not pending and not unlisted:
        return
    # Only now is the keystore needed (a store assembled before its keystore has nothing
    # to seal or register yet).
    with admin.admin_session(config) as session:
        sealed = admin.seal_existing_rows(session, pending) if pending else {}
        if registered := register_existing_nodes(session):
            sealed["audit_nodes"] = len(registered)
    if sealed:
        counts = ", ".join(f"{name} {count}" for name, count in sealed.items())
        typer.echo(f"sealed existing rows (trust on upgrade): {counts}")


@tls_cli.command("renew")
def tls_renew(
    data_dir: DataDir = None,
    name: Annotated[list[str] | None, typer.Option(
        "--name", help="another DNS name or IP address to include (repeatable)")] = None,
    days: Annotated[int, typer.Option(min=1, max=825, help="validity in days")] = 825,
    force: Annotated[bool, typer.Option(
        "--force", help="replace a certificate that Sceau did not make")] = False,
) -> None:
    """Make a new self-signed certificate and key for the data dir (names from its config).

    The names are the host of service.service_id, server.host, any --name, then localhost,
    127.0.0.1 and ::1 (set $SCEAU_SERVICE_ID / $SCEAU_HOST as the service runs). The
    previous pair is kept as cert.pem.old / key.pem.old. Restart `sceau serve` to use it.
    """
    from sceau.provision import renew_tls_certificate

    renewed = renew_tls_certificate(config_from(data_dir), name or (), days=days, force=force)
    typer.echo(f"new certificate {renewed.cert} for {', '.join(renewed.names)}, "
               f"valid until {renewed.not_after:%Y-%m-%d}")
    if renewed.previous is not None:
        typer.echo(f"the previous one is kept as {renewed.previous}")
    typer.echo("restart `sceau serve` to use it, and give clients that verify with the old "
               "cert.pem the new one (docs/deploy.md)")


def _read_input(path: Path | None) -> bytes:
    if path is None or str(path) == "-":
        return sys.stdin.buffer.read()
    return path.read_bytes()


def _write_output(path: Path | None, data: bytes) -> None:
    if path is None or str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        path.write_bytes(data)


Profile = Annotated[
    Path, typer.Option("--profile", "-p", envvar="SCEAU_PROFILE", help="client profile file")
]
User = Annotated[str | None, typer.Option("--user", "-u", help="act for this user (sub)")]
InFile = Annotated[Path | None, typer.Option("--in", "-i", help="input (default stdin)")]
OutFile = Annotated[Path | None, typer.Option("--out", "-o", help="output (default stdout)")]


@cli.command()
def encrypt(
    profile: Profile,
    user: User = None,
    input_file: InFile = None,
    output: OutFile = None,
    armor: Annotated[
        bool, typer.Option("--armor/--binary", help="text armor or raw envelope")
    ] = True,
    name: Annotated[str | None, typer.Option(help="document name of the new key")] = None,
    to: Annotated[list[str] | None, typer.Option("--to", help="recipient (repeatable)")] = None,
    local: Annotated[bool, typer.Option("--local", help="encrypt here with a data key")] = False,
) -> None:
    """Encrypt stdin (or --in) to stdout through the service."""
    from sceau.client import Client
    from sceau.core.envelope import armor as to_armor

    data = _read_input(input_file)
    options: dict[str, Any] = {}
    if name:
        options["name"] = name
    if to:
        options["recipients"] = to
    with Client.from_profile(profile, user=user) as client:
        if local:
            envelope = client.seal_local(data, **options)
        else:
            _key_id, envelope = client.encrypt(data, **options)
    _write_output(output, to_armor(envelope).encode("ascii") if armor else envelope)


@cli.command()
def decrypt(
    profile: Profile,
    user: User = None,
    input_file: InFile = None,
    output: OutFile = None,
    local: Annotated[bool, typer.Option("--local", help="decrypt here with get-data-key")] = False,
) -> None:
    """Decrypt an armored or binary envelope from stdin (or --in) to stdout."""
    from sceau.client import Client
    from sceau.core.envelope import MAGIC, dearmor

    data = _read_input(input_file)
    envelope = data if data.startswith(MAGIC) else dearmor(data.decode("ascii", "replace"))
    with Client.from_profile(profile, user=user) as client:
        plaintext = client.open_local(envelope) if local else client.decrypt(envelope)
    _write_output(output, plaintext)


def main() -> None:
    """Entry point: one place catches every Sceau error and prints it for a person."""
    try:
        cli(standalone_mode=True)
    except SceauError as error:
        report(error.diagnostics())
    except ValueError as error:
        report(str(error))
    except OSError as error:
        report(f"{error.strerror or error}: {getattr(error, 'filename', '') or ''}".rstrip(": "))


def report(message: str) -> None:
    sys.stderr.write(f"sceau: error: {message}\n")
    sys.exit(1)



