"""``sceau dke key ...``: Microsoft Purview Double Key Encryption keys (SPEC §11)."""

from __future__ import annotations

from typing import Annotated

import typer

from sceau.cli.common import DataDir, JsonFlag, print_json, print_listing, run_admin

app = typer.Typer(help="Microsoft DKE: key pairs kept in the keystore.", no_args_is_help=True)
key_app = typer.Typer(help="DKE keys: create, list, enable, disable, rotate, retire.",
                      no_args_is_help=True)
app.add_typer(key_app, name="key")

Name = Annotated[str, typer.Argument(help="the DKE key name (the URL's {keyname})")]


@key_app.command("create")
def create(name: Name,
           allow: Annotated[list[str], typer.Option(
               "--allow", help="a principal allowed to decrypt: address or *@domain")],
           data_dir: DataDir = None) -> None:
    """Make an RSA-2048 key pair inside the keystore (non-extractable on PKCS#11)."""
    from sceau.service.workspace.admin import create_dke_key

    made = run_admin(data_dir, lambda s: create_dke_key(s, name, allow))
    print_json(made)


@key_app.command("list")
def list_keys(as_json: JsonFlag = False,
              data_dir: DataDir = None) -> None:
    """List DKE keys, their status, allowed principals and versions."""
    from sceau.service.workspace.admin import list_dke_keys

    print_listing(
        run_admin(data_dir, lambda s: list_dke_keys(s.engines, s.keystore)), as_json,
        ("name", "status", "allow", "versions"),
        lambda k: (k["name"], k["status"], " ".join(k.get("allow", [])),
                   " ".join(f"{v['keyid']}({v['status']})" for v in k.get("versions", []))))


@key_app.command("enable")
def enable(name: Name, data_dir: DataDir = None) -> None:
    """Enable a DKE key."""
    from sceau.service.workspace.admin import set_dke_key_enabled

    run_admin(data_dir, lambda s: set_dke_key_enabled(s, name, True))
    typer.echo(f"{name} enabled")


@key_app.command("disable")
def disable(name: Name, data_dir: DataDir = None) -> None:
    """Disable a DKE key: every decryption is refused from the next request on."""
    from sceau.service.workspace.admin import set_dke_key_enabled

    run_admin(data_dir, lambda s: set_dke_key_enabled(s, name, False))
    typer.echo(f"{name} disabled")


@key_app.command("rotate")
def rotate(name: Name, data_dir: DataDir = None) -> None:
    """Make a new version (keyid) current; older versions keep decrypting until retired."""
    from sceau.service.workspace.admin import rotate_dke_key

    keyid = run_admin(data_dir, lambda s: rotate_dke_key(s, name))
    print_json({"name": name, "keyid": keyid})


@key_app.command("retire")
def retire(name: Name, keyid: Annotated[str, typer.Argument(help="the version to retire")],
           data_dir: DataDir = None) -> None:
    """Retire a version: its private key is destroyed (what it protected is shredded)."""
    from sceau.service.workspace.admin import retire_dke_key

    run_admin(data_dir, lambda s: retire_dke_key(s, name, keyid))
    typer.echo(f"{name} {keyid} retired")
