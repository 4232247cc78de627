"""``sceau account ...``: console accounts, by the host operator.

The host operator holds the data dir and the keystore, and is trusted with everything
already; so what the console gates behind a second admin (creating a ``user`` or ``admin``
account, a password reset, removing a second factor) runs here directly, audited with
``app`` cli, ``user`` the OS user and ``details.via = "host_operator"``. An installation
with a single admin creates its accounts this way (docs/console.md).
"""

from __future__ import annotations

from typing import Annotated

import typer

from sceau.cli.common import (
    DataDir,
    JsonFlag,
    print_json,
    print_table,
    run_admin,
    sealed_status,
    with_store,
)
from sceau.vocab import AccountStatus

app = typer.Typer(help="Console accounts: add, reset, list, disable, enable.",
                  no_args_is_help=True)

Username = Annotated[str, typer.Argument(help="account name (the identity, e.g. an email)")]


@app.command("add")
def add(
    username: Username,
    role: Annotated[str, typer.Option("--role", help="admin, auditor or user")],
    as_json: JsonFlag = False,
    data_dir: DataDir = None,
) -> None:
    """Create an account; prints its one-time password once (changed at first sign-in)."""
    from sceau import admin

    parsed = admin.account_role(role)
    name = admin.account_name(username)
    password = run_admin(data_dir, lambda session: admin.create_account(session, name, parsed))
    _issued(name, password, as_json)


@app.command("reset")
def reset(
    username: Username,
    clear_totp: Annotated[bool, typer.Option(
        "--clear-totp", help="also remove the account's second factor (kept by default)")] = False,
    as_json: JsonFlag = False,
    data_dir: DataDir = None,
) -> None:
    """Give an account a new one-time password and end its sessions."""
    from sceau import admin

    password = run_admin(data_dir, lambda session: admin.reset_account(
        session, username, clear_totp=clear_totp))
    _issued(username, password, as_json)


def _issued(username: str, password: str, as_json: bool) -> None:
    if as_json:
        print_json({"username": username, "one_time_password": password})
        return
    typer.echo(f"{username}: one-time password (shown once, changed at first sign-in): "
               f"{password}")


@app.command("list")
def list_accounts(
    as_json: JsonFlag = False,
    data_dir: DataDir = None,
) -> None:
    """List console accounts (a row that fails its seal is flagged; no secret is shown)."""
    from sceau import admin

    rows = with_store(data_dir, admin.list_accounts)
    if as_json:
        print_json(rows)
        return
    print_table(("account", "role", "status", "sign-in", "two-factor", "must change password"),
                [(a["username"], a["role"], sealed_status(a), a["auth"],
                  "on" if a["second_factor"] else "off",
                  "yes" if a["must_change_password"] else "no") for a in rows])


def _set_status(username: str, status: AccountStatus, data_dir: DataDir) -> None:
    from sceau import admin

    run_admin(data_dir, lambda session: admin.set_account_status(session, username, status))
    typer.echo(f"{username}: {status}")


@app.command("disable")
def disable(username: Username, data_dir: DataDir = None) -> None:
    """Disable an account: its sessions end and it can no longer sign in."""
    _set_status(username, AccountStatus.DISABLED, data_dir)


@app.command("enable")
def enable(username: Username, data_dir: DataDir = None) -> None:
    """Enable a disabled account."""
    _set_status(username, AccountStatus.ACTIVE, data_dir)
