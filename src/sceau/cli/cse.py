"""``sceau cse ...``: Google Workspace client-side encryption administration (SPEC §11)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import typer

from sceau.cli.common import (
    DataDir,
    JsonFlag,
    config_from,
    fail_with,
    print_json,
    print_listing,
    run_admin,
)
from sceau.errors import InvalidRequest, SceauError

app = typer.Typer(help="Google Workspace CSE: cse_admin holders, S/MIME keys for Gmail.",
                  no_args_is_help=True)
admins = typer.Typer(help="Holders of cse_admin (the privileged endpoints). Granting it "
                     "opens data: host operator only, audited.", no_args_is_help=True)
app.add_typer(admins, name="admins")


@admins.command("add")
def admins_add(email: Annotated[str, typer.Argument(help="the admin's email address")],
               data_dir: DataDir = None) -> None:
    """Grant cse_admin to EMAIL (audited CSE_ADMIN_ADD)."""
    from sceau.service.workspace.admin import add_cse_admin

    run_admin(data_dir, lambda session: add_cse_admin(session, email, session.actor))
    typer.echo(f"{email.lower()} now holds cse_admin")


@admins.command("remove")
def admins_remove(email: Annotated[str, typer.Argument(help="the admin's email address")],
                  data_dir: DataDir = None) -> None:
    """Withdraw cse_admin from EMAIL (audited CSE_ADMIN_REMOVE)."""
    from sceau.service.workspace.admin import remove_cse_admin

    run_admin(data_dir, lambda session: remove_cse_admin(session, email))
    typer.echo(f"{email.lower()} no longer holds cse_admin")


@admins.command("list")
def admins_list(as_json: JsonFlag = False,
                data_dir: DataDir = None) -> None:
    """List cse_admin holders (a row that fails its seal grants nothing and is flagged)."""
    from sceau.service.workspace.admin import list_cse_admins

    print_listing(run_admin(data_dir, lambda s: list_cse_admins(s.engines, s.keystore)),
                  as_json, ("email", "added by", "seal"),
                  lambda row: (row["email"], row["added_by"],
                               "ok" if row["sealed"] else "FAILS: grants nothing"))


@app.command("wrap-private-key")
def wrap_private_key(
    email: Annotated[str, typer.Argument(help="the mailbox whose S/MIME key pair this is")],
    key: Annotated[Path, typer.Option("--key", help="its private key: PEM (PKCS#1 or "
                                      "PKCS#8) or DER; RSA, 2048 to 4096 bits")],
    cert: Annotated[Path, typer.Option("--cert", help="its certificate and chain: PEM "
                                       "certificates or a PEM PKCS#7")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="where to write the files "
                                          "for Gmail")] = Path("."),
    perimeter_id: Annotated[str, typer.Option("--perimeter-id",
                                              help="bind the key to this perimeter")] = "",
    key_password_file: Annotated[Path | None, typer.Option(
        "--key-password-file", help="a file holding the private key's password")] = None,
    lifetime_days: Annotated[int, typer.Option(
        "--lifetime-days", help="the Sceau key's lifetime (mail outlives certificates)")
    ] = 36_500,
    data_dir: DataDir = None,
) -> None:
    """Prepare an S/MIME key pair for upload to Gmail (client-side encryption).

    The private key is wrapped under a new Sceau key owned by EMAIL (application
    google-workspace): disable or destroy that key and the mailbox's key pair stops
    working. Writes, in --out-dir: EMAIL.p7pem (the chain, PKCS#7 PEM), EMAIL.wrap
    (kacls_url and wrapped_private_key) and EMAIL.keypair.json (the body of the Gmail
    API's cse.keypairs.create). Audited CSE_WRAP_PRIVATE_KEY.
    """
    import datetime
    import json

    from sceau import admin
    from sceau.config.workspace import normalize_url
    from sceau.core.smime import certificate_emails, load_chain, load_private_key, pkcs7_pem
    from sceau.service.workspace.admin import wrap_private_key as wrap
    from sceau.service.workspace.gmail import mailbox_email

    try:
        config = config_from(data_dir)
        mailbox = mailbox_email(email)
        password = (_read(key_password_file, "--key-password-file").rstrip(b"\r\n")
                    if key_password_file else None)
        private = load_private_key(_read(key, "--key"), password)
        chain = load_chain(_read(cert, "--cert"), private)
        if mailbox not in certificate_emails(chain[0]):
            raise InvalidRequest(f"certificate: it does not name {mailbox}")
        if chain[0].not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
            raise InvalidRequest("certificate: it has expired")
        kacls_url = normalize_url(config.cse.kacls_url or f"{config.service_id}/cse")
        files = {name: out_dir / f"{mailbox}{name}"
                 for name in (".p7pem", ".wrap", ".keypair.json")}
        taken = [str(p) for p in files.values() if p.exists()]
        if taken:
            raise InvalidRequest(f"--out-dir: {', '.join(taken)} exists already")
        with admin.admin_session(config) as session:
            wrapped, key_id = wrap(session, email=mailbox, key=private,
                                   perimeter_id=perimeter_id, lifetime_days=lifetime_days)
    except SceauError as exc:
        fail_with(exc)
    wrapped_text = base64.b64encode(wrapped).decode("ascii")
    chain_pem = pkcs7_pem(chain).decode("ascii")
    contents = {
        ".p7pem": chain_pem,
        ".wrap": json.dumps({"kacls_url": kacls_url, "wrapped_private_key": wrapped_text},
                            indent=2) + "\n",
        ".keypair.json": json.dumps({"pkcs7": chain_pem, "privateKeyMetadata": [
            {"kaclsKeyMetadata": {"kaclsUri": kacls_url, "kaclsData": wrapped_text}}]},
            indent=2) + "\n",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        with path.open("x", encoding="ascii") as handle:
            handle.write(contents[name])
    print_json({"email": mailbox, "key_id": key_id, "kacls_url": kacls_url,
                "files": [str(p) for p in files.values()]})


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"{option}: cannot read {path} ({exc.strerror})") from None
