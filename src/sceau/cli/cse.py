"""``sceau cse ...``: Google Workspace client-side encryption administration (SPEC §11)."""

from __future__ import annotations

from typing import Annotated

import typer

from sceau.cli.common import DataDir, config_from, fail_with, print_json
from sceau.errors import SceauError

app = typer.Typer(help="Google Workspace CSE: cse_admin holders, S/MIME keys for Gmail.",
                  no_args_is_help=True)
admins = typer.Typer(help="Holders of cse_admin (the privileged endpoints). Granting it "
                     "opens data: host operator only, audited.", no_args_is_help=True)
app.add_typer(admins, name="admins")


@admins.command("add")
def admins_add(email: Annotated[str, typer.Argument(help="the admin's email address")],
               data_dir: DataDir = None) -> None:
    """Grant cse_admin to EMAIL (audited CSE_ADMIN_ADD)."""
    from sceau import admin
    from sceau.service.workspace.admin import add_cse_admin

    try:
        with admin.admin_session(config_from(data_dir)) as session:
            add_cse_admin(session, email, session.actor)
    except SceauError as exc:
        fail_with(exc)
    typer.echo(f"{email.lower()} now holds cse_admin")


@admins.command("remove")
def admins_remove(email: Annotated[str, typer.Argument(help="the admin's email address")],
                  data_dir: DataDir = None) -> None:
    """Withdraw cse_admin from EMAIL (audited CSE_ADMIN_REMOVE)."""
    from sceau import admin
    from sceau.service.workspace.admin import remove_cse_admin

    try:
        with admin.admin_session(config_from(data_dir)) as session:
            remove_cse_admin(session, email)
    except SceauError as exc:
        fail_with(exc)
    typer.echo(f"{email.lower()} no longer holds cse_admin")


@admins.command("list")
def admins_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
                data_dir: DataDir = None) -> None:
    """List cse_admin holders (a row that fails its seal grants nothing and is flagged)."""
    from sceau import admin
    from sceau.service.workspace.admin import list_cse_admins

    try:
        with admin.admin_session(config_from(data_dir)) as session:
            rows = list_cse_admins(session)
    except SceauError as exc:
        fail_with(exc)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        flag = "" if row["sealed"] else "  (SEAL FAILS: grants nothing)"
        typer.echo(f"{row['email']}  added by {row['added_by']}{flag}")
