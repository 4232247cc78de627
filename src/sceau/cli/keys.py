"""``sceau key ...``: key and authorization lifecycle.

Every command but ``purge-expired`` goes through the service with a client profile
(``--profile/-p`` or ``$SCEAU_PROFILE``) acting for ``--user/-u`` (default: the profile's
user), so it is authorized and audited like any API call. ``purge-expired`` is an operator
command: it works on the store of a data dir directly, with an audited admin session.

Output: Rich tables for people, ``--json`` for scripts (the API result, unchanged).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from sceau import admin
from sceau.cli.common import DataDir, JsonFlag, config_from, print_json, print_table
from sceau.client import Client
from sceau.core.b64 import MalformedBase64, b64u_decode
from sceau.core.policy import Actor
from sceau.errors import SceauError
from sceau.service import receipts
from sceau.service.lifecycle import KeyLifecycle
from sceau.store.keys import keys_expired_before
from sceau.store.writer import Job, Tx
from sceau.vocab import Action, ListRole, ListStatus, Right

# A key id is 16 random bytes in base64url: one in 64 starts with "-", which Click would read
# as an option ("No such option: -3"). Such a word, standing where no option takes a value,
# is marked before parsing with a NUL (which no real argument can hold) and unmarked by the
# key id's own check, so ``sceau key show -32IZJ9jjFCI2uX67hUQag`` works as pasted.
_DASHED_KEY_ID = re.compile(r"-[A-Za-z0-9_-]{20}[AQgw]")
_MARK = "\0"


class _KeyIdGroup(TyperGroup):
    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is None:
            return name, cmd, rest
        takes_value = {opt for param in cmd.params if param.param_type_name == "option"
                       and not getattr(param, "is_flag", False)
                       and not getattr(param, "count", False) for opt in param.opts}
        marked: list[str] = []
        for i, word in enumerate(rest):
            if word == "--":
                marked.extend(rest[i:])
                break
            after_option = bool(marked) and marked[-1] in takes_value
            marked.append(_MARK + word if _DASHED_KEY_ID.fullmatch(word) and not after_option
                          else word)
        return name, cmd, marked


app = typer.Typer(help="Keys: show, list, enable, disable, destroy, update, grants, accesses.",
                  no_args_is_help=True, cls=_KeyIdGroup)

ProfileOpt = Annotated[
    Path, typer.Option("--profile", "-p", envvar="SCEAU_PROFILE", help="client profile file")
]
UserOpt = Annotated[str | None, typer.Option("--user", "-u", help="act for this user (sub)")]
def _check_key_id(value: str) -> str:
    """Fail early, before any network call, on something that is not a key id."""
    value = value.removeprefix(_MARK)
    try:
        if len(b64u_decode(value)) == 16:
            return value
    except MalformedBase64:
        pass
    raise typer.BadParameter("a key id is 16 bytes in unpadded base64url")


KeyArg = Annotated[str, typer.Argument(help="key id (base64url)", callback=_check_key_id)]
PrincipalArg = Annotated[str, typer.Argument(help="identity or *@domain pattern")]

# Values of a time or rule option that mean "remove this bound / rule".
CLEAR = frozenset({"none", "null", "-"})
PURGE_CHUNK = 200


def _client(profile: Path, user: str | None) -> Client:
    return Client.from_profile(profile, user=user)


def _time(value: str | None) -> int | str | None:
    """A CLI time: RFC 3339 or NumericDate; the service checks it."""
    if value is None or value.lower() in CLEAR:
        return None
    return int(value) if value.isdigit() else value


# --- output ----------------------------------------------------------------------------------


def _show(meta: dict[str, Any]) -> None:
    fields = [(field, meta[field]) for field in (
        "key_id", "status", "owner", "application", "name", "tag", "created_at", "expires_at",
        "not_before", "not_after", "destroy_at", "destroyed_at", "decryptions", "revision",
        "master_version") if meta.get(field) is not None]
    rules = meta.get("rules") or {}
    if rules.get("allowed_networks") is not None:
        fields.append(("allowed_networks", ", ".join(rules["allowed_networks"])))
    if rules.get("max_decryptions") is not None:
        fields.append(("max_decryptions", rules["max_decryptions"]))
    print_table(("field", "value"), fields, header=False)
    auths = meta.get("authorizations") or []
    if auths:
        print_table(("principal", "rights", "status", "not_before", "not_after", "added_by"),
                    [(a["principal"], ",".join(a["rights"]), a["status"], a["not_before"] or "",
                      a["not_after"] or "", a["added_by"]) for a in auths],
                    title="authorizations")


def _emit(meta: dict[str, Any], as_json: bool, message: str | None = None) -> None:
    if as_json:
        print_json(meta)
    elif message is not None:
        typer.echo(message)
    else:
        _show(meta)


def _keys_table(keys: list[dict[str, Any]]) -> None:
    rows = []
    for k in keys:
        # A key you may only use comes in the recipient view (docs/policy.md): no tag or
        # dates, and only your own authorization, shown as its rights.
        full = "rules" in k
        grants = (str(len(k["authorizations"])) if full else
                  "yours: " + "; ".join(",".join(a["rights"]) for a in k["authorizations"]))
        rows.append((k["key_id"], k["status"], k["owner"], k.get("name") or "",
                     k.get("tag") or "", k.get("created_at") or "", k.get("expires_at") or "",
                     grants))
    print_table(("key_id", "status", "owner", "name", "tag", "created_at", "expires_at",
                 "grants"), rows)


# --- reading ---------------------------------------------------------------------------------


@app.command("show")
def show(key_id: KeyArg, profile: ProfileOpt, user: UserOpt = None,
         as_json: JsonFlag = False) -> None:
    """Show a key's metadata and authorizations (owner or `manage`)."""
    with _client(profile, user) as client:
        meta = client.describe_key(key_id)
    _emit(meta, as_json)


@app.command("list")
def list_keys(
    profile: ProfileOpt,
    user: UserOpt = None,
    role: Annotated[ListRole, typer.Option(help="owner, recipient or any")] = ListRole.ANY,
    status: Annotated[ListStatus | None, typer.Option(help="filter by status")] = None,
    name: Annotated[str | None, typer.Option(help="name contains (case-insensitive)")] = None,
    tag: Annotated[str | None, typer.Option(help="exact tag")] = None,
    application: Annotated[str | None, typer.Option(help="creating application's app_id")] = None,
    created_from: Annotated[str | None, typer.Option(help="created at or after (RFC 3339)")] = None,
    created_to: Annotated[str | None, typer.Option(help="created at or before (RFC 3339)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="page size")] = 100,
    cursor: Annotated[str | None, typer.Option(help="continue from a previous next_cursor")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="follow next_cursor to the end")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List the keys you own or are authorized on, newest first."""
    filters: dict[str, Any] = {
        "role": str(role), "status": str(status) if status is not None else None, "name": name,
        "tag": tag, "application": application, "created_from": _time(created_from),
        "created_to": _time(created_to),
    }
    with _client(profile, user) as client:
        if all_pages:
            result: dict[str, Any] = {
                "keys": list(client.iter_keys(page_size=limit, **filters)), "next_cursor": None,
            }
        else:
            result = client.list_keys(limit=limit, cursor=cursor, **filters)
    if as_json:
        print_json(result)
        return
    _keys_table(result["keys"])
    if result.get("next_cursor"):
        typer.echo(f"more: --cursor {result['next_cursor']}", err=True)


@app.command("accesses")
def accesses(
    key_id: KeyArg,
    profile: ProfileOpt,
    user: UserOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="page size")] = 100,
    cursor: Annotated[str | None, typer.Option(help="continue from a previous next_cursor")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The audit records of a key, newest first (owner or `manage`)."""
    with _client(profile, user) as client:
        result = client.list_accesses(key_id, limit=limit, cursor=cursor)
    if as_json:
        print_json(result)
        return
    print_table(("seq", "time", "action", "outcome", "reason", "user", "app", "ip"),
                [(r["seq"], r["time"], r["action"], r["outcome"], r["reason"] or "",
                  r["user"] or "", r["app"] or "", r["ip"] or "") for r in result["accesses"]])
    if result.get("next_cursor"):
        typer.echo(f"more: --cursor {result['next_cursor']}", err=True)


# --- key changes -------------------------------------------------------------------------------


def _change(profile: Path, user: str | None, as_json: bool,
            change: Callable[[Client], dict[str, Any]],
            done: Callable[[dict[str, Any]], str]) -> None:
    """One key change through the API; the key as it now is, or the line ``done`` makes."""
    with _client(profile, user) as client:
        meta = change(client)
    _emit(meta, as_json, done(meta))


def _status(key_id: str) -> Callable[[dict[str, Any]], str]:
    return lambda meta: f"{key_id}: {meta['status']}"


@app.command("enable")
def enable(key_id: KeyArg, profile: ProfileOpt, user: UserOpt = None,
           as_json: JsonFlag = False) -> None:
    """Enable a key."""
    _change(profile, user, as_json, lambda client: client.enable_key(key_id), _status(key_id))


@app.command("disable")
def disable(key_id: KeyArg, profile: ProfileOpt, user: UserOpt = None,
            as_json: JsonFlag = False) -> None:
    """Disable a key: its data becomes unreadable everywhere at once (reversible)."""
    _change(profile, user, as_json, lambda client: client.disable_key(key_id), _status(key_id))


@app.command("cancel-destruction")
def cancel_destruction(key_id: KeyArg, profile: ProfileOpt, user: UserOpt = None,
                       as_json: JsonFlag = False) -> None:
    """Cancel a pending destruction; the key returns to `disabled`."""
    _change(profile, user, as_json, lambda client: client.cancel_destruction(key_id),
            _status(key_id))


@app.command("destroy")
def destroy(
    key_id: KeyArg,
    profile: ProfileOpt,
    user: UserOpt = None,
    pending_days: Annotated[int, typer.Option(min=0, max=30, help="destroy after N days "
                                              "(0: now, irreversibly)")] = 0,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Destroy a key (crypto-shredding): its data can never be decrypted again."""
    if not yes:
        what = (f"schedule key {key_id} for destruction in {pending_days} day(s)" if pending_days
                else f"destroy key {key_id} now; its data will be unreadable forever")
        typer.confirm(f"{what}. Continue?", abort=True, err=True)
    with _client(profile, user) as client:
        result = client.destroy_key(key_id, pending_days=pending_days)
    if as_json:
        print_json(result)
    elif "receipt" in result:
        typer.echo(f"{result['key_id']}: destroyed at {result['destroyed_at']}")
        typer.echo(f"receipt: {result['receipt']}")
    else:
        typer.echo(f"{result['key_id']}: {result['status']} until {result['destroy_at']}")


def _rules_change(client: Client, key_id: str, networks: str | None,
                  max_decryptions: str | None, clear_rules: bool) -> dict[str, Any] | None:
    """The whole new ``rules`` object (update-key replaces it), or None when unchanged."""
    if clear_rules:
        return {}
    if networks is None and max_decryptions is None:
        return None
    rules: dict[str, Any] = dict(client.describe_key(key_id).get("rules") or {})
    if networks is not None:
        if networks.lower() in CLEAR or networks.lower() == "any":
            rules.pop("allowed_networks", None)
        else:
            rules["allowed_networks"] = [n.strip() for n in networks.split(",") if n.strip()]
    if max_decryptions is not None:
        if max_decryptions.lower() in CLEAR:
            rules.pop("max_decryptions", None)
        else:
            try:
                rules["max_decryptions"] = int(max_decryptions)
            except ValueError:
                raise typer.BadParameter("an integer or 'none'",
                                         param_hint="--max-decryptions") from None
    return rules


@app.command("update")
def update(
    key_id: KeyArg,
    profile: ProfileOpt,
    user: UserOpt = None,
    name: Annotated[str | None, typer.Option(help="document name")] = None,
    tag: Annotated[str | None, typer.Option(help="tag")] = None,
    not_before: Annotated[str | None, typer.Option(help="data valid from (RFC 3339; 'none' "
                                                   "removes the bound)")] = None,
    not_after: Annotated[str | None, typer.Option(help="data valid until (RFC 3339; 'none' "
                                                  "removes the bound)")] = None,
    expires_at: Annotated[str | None, typer.Option(help="key lifetime end (RFC 3339)")] = None,
    networks: Annotated[str | None, typer.Option(help="allowed networks, comma-separated "
                                                 "CIDRs ('any' removes the rule)")] = None,
    max_decryptions: Annotated[str | None, typer.Option(help="decryption budget ('none' "
                                                        "removes the rule)")] = None,
    clear_rules: Annotated[bool, typer.Option("--clear-rules", help="remove every rule")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Change a key's name, tag, validity window, lifetime or rules."""
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if tag is not None:
        changes["tag"] = tag
    for field, value in (("not_before", not_before), ("not_after", not_after),
                         ("expires_at", expires_at)):
        if value is not None:
            changes[field] = _time(value)
    with _client(profile, user) as client:
        rules = _rules_change(client, key_id, networks, max_decryptions, clear_rules)
        if rules is not None:
            changes["rules"] = rules
        if not changes:
            raise typer.BadParameter("name at least one thing to change")
        meta = client.update_key(key_id, **changes)
    _emit(meta, as_json, None)


# --- authorizations ----------------------------------------------------------------------------


def _rights(text: str) -> list[str]:
    rights = [r.strip() for r in text.split(",") if r.strip()]
    allowed = {str(r) for r in Right}
    bad = [r for r in rights if r not in allowed]
    if bad or not rights:
        raise typer.BadParameter(f"comma-separated rights among {', '.join(sorted(allowed))}",
                                 param_hint="--rights")
    return rights


@app.command("grant")
def grant(
    key_id: KeyArg,
    principal: PrincipalArg,
    profile: ProfileOpt,
    user: UserOpt = None,
    rights: Annotated[str, typer.Option(help="decrypt, manage or decrypt,manage")] = "decrypt",
    not_before: Annotated[str | None, typer.Option(help="grant valid from (RFC 3339)")] = None,
    not_after: Annotated[str | None, typer.Option(help="grant valid until (RFC 3339)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Authorize a principal (identity or *@domain) on a key."""
    with _client(profile, user) as client:
        meta = client.add_authorization(key_id, principal, _rights(rights),
                                        not_before=_time(not_before), not_after=_time(not_after))
    _emit(meta, as_json, f"{key_id}: granted {rights} to {principal}")


@app.command("revoke")
def revoke(key_id: KeyArg, principal: PrincipalArg, profile: ProfileOpt,
           user: UserOpt = None, as_json: JsonFlag = False) -> None:
    """Remove a principal's authorization."""
    _change(profile, user, as_json, lambda client: client.remove_authorization(key_id, principal),
            lambda _: f"{key_id}: revoked {principal}")


@app.command("grant-enable")
def grant_enable(key_id: KeyArg, principal: PrincipalArg, profile: ProfileOpt,
                 user: UserOpt = None, as_json: JsonFlag = False) -> None:
    """Re-enable a principal's authorization."""
    _change(profile, user, as_json, lambda client: client.enable_authorization(key_id, principal),
            lambda _: f"{key_id}: {principal} enabled")


@app.command("grant-disable")
def grant_disable(key_id: KeyArg, principal: PrincipalArg, profile: ProfileOpt,
                  user: UserOpt = None, as_json: JsonFlag = False) -> None:
    """Suspend a principal's authorization without removing it."""
    _change(profile, user, as_json, lambda client: client.disable_authorization(key_id, principal),
            lambda _: f"{key_id}: {principal} disabled")


# --- purge-expired (operator, against the store) ---------------------------------------------


@dataclass(frozen=True)
class PurgeOutcome:
    """One key handled by ``purge-expired``: a receipt, or the refusal (audited too)."""

    key_id: str
    result: dict[str, Any] | None
    error: SceauError | None


def purge_expired(session: admin.AdminSession, *, older_than_days: int,
                  now: int) -> Iterator[PurgeOutcome]:
    """Destroy every key whose ``expires_at`` is ``older_than_days`` days before ``now``.

    One writer job of the key-lifecycle service per key, run as the host operator: the key
    is re-read and re-checked inside it, shredded like ``destroy-key``, and one
    ``DESTROY_KEY`` record (``details.purge = true``) is committed before its receipt is
    produced. Keys whose destruction is refused are reported, not retried within this run.
    """
    keys = session.config.keys
    cutoff = now - older_than_days * keys.day_seconds
    lifecycle = KeyLifecycle(session.keystore, keys)
    operator = Actor(app_id=admin.CLI_APP, user=session.actor)
    tried: set[bytes] = set()
    while True:
        with session.engines.read.connect() as conn:
            found = keys_expired_before(conn, cutoff, PURGE_CHUNK + len(tried))
        batch = [k for k in found if k not in tried]
        if not batch:
            return
        for raw in batch:
            tried.add(raw)
            job = lifecycle.purge_job(operator, raw, cutoff=cutoff,
                                      older_than_days=older_than_days)
            yield _purge_one(session, job)


def _purge_one(session: admin.AdminSession, job: Job) -> PurgeOutcome:
    key_id = job.ctx.key or ""
    try:
        outcome = session.writer.run_now(job)
    except SceauError as exc:
        if exc.status >= 500:
            raise
        return PurgeOutcome(key_id, None, exc)
    result = receipts.receipt_result(session.keystore, session.config.service_id,
                                     outcome.value, outcome)
    return PurgeOutcome(key_id, result, None)


@app.command("purge-expired")
def purge_expired_cmd(
    older_than: Annotated[int, typer.Option("--older-than", min=0, metavar="DAYS",
                                            help="destroy keys expired at least DAYS ago")],
    data_dir: DataDir = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Destroy expired keys in bulk, directly in the store; prints a receipt per key."""
    config = config_from(data_dir)
    if not yes:
        typer.confirm(f"destroy every key that expired {older_than} day(s) ago or earlier, "
                      "irreversibly. Continue?", abort=True, err=True)
    destroyed: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    now = int(time.time())
    with admin.admin_session(config) as session:
        for item in purge_expired(session, older_than_days=older_than, now=now):
            if item.result is not None:
                destroyed.append(item.result)
                if not as_json:
                    typer.echo(f"{item.key_id}: destroyed at {item.result['destroyed_at']}")
                    typer.echo(f"receipt: {item.result['receipt']}")
            elif item.error is not None:
                refused.append({"key_id": item.key_id, "code": item.error.code,
                                "detail": item.error.detail})
                if not as_json:
                    typer.echo(f"{item.key_id}: refused: {item.error.diagnostics()}", err=True)

        def summary(tx: Tx) -> None:
            tx.ctx.details = {"older_than_days": older_than, "destroyed": len(destroyed),
                              "refused": len(refused)}

        session.run(Action.PURGE_EXPIRED, summary)
    if as_json:
        print_json({"destroyed": destroyed, "refused": refused})
    elif not destroyed and not refused:
        typer.echo("no expired key to purge")
    if refused:
        raise typer.Exit(1)
