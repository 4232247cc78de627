"""Keys: the table (filters, sorting, keyset pages, bulk enable/disable) and the key page."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sceau.core.b64 import MalformedBase64, b64u_decode, b64u_encode
from sceau.core.envelope import KEY_ID_LEN
from sceau.core.model import Authorization, KeyRecord, normalize_identity
from sceau.core.policy import display_status, matching_authorizations
from sceau.errors import IntegrityFailure, NotFound, SceauError
from sceau.service import approvals, keyops
from sceau.service.console import keyactions
from sceau.service.console.adminpages import QUORUM_NOTE, ConsoleRunner
from sceau.service.console.auth import reauthenticate
from sceau.service.console.keyactions import session_actor
from sceau.service.console.web import (
    PREFIX,
    Console,
    PageError,
    Redirect,
    Session,
    form_list,
    form_of,
    not_found,
    query_string,
)
from sceau.service.lifecycle import domain_pattern
from sceau.service.params import DestroyKeyParams, parse_model
from sceau.service.receipts import DestroyedKey, receipt_result
from sceau.store.audit import newest_audit_lines
from sceau.store.keys import KEY_SORTS, KeyFilter, list_keys
from sceau.store.writer import Tx
from sceau.vocab import Action, ErrorCode, KeyStatus, ListRole, ListStatus, Right, Role

PAGE_SIZES = (25, 50, 100, 200)
MAX_BULK = 1000
ACCESS_PAGE = 50
FILTERS = ("person", "role", "status", "created_from", "created_to", "name", "application",
           "tag", "sort", "order", "limit")
DONE = {
    "enabled": "Key enabled.",
    "disabled": "Key disabled.",
    "auth_added": "Authorization added.",
    "auth_changed": "Authorization updated.",
}


def parse_key_id(text: str) -> bytes:
    try:
        raw = b64u_decode(text)
    except MalformedBase64:
        raise not_found() from None
    if len(raw) != KEY_ID_LEN:
        raise not_found()
    return raw


def _day(text: str, *, end: bool) -> int | None:
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise PageError(400, "Dates are YYYY-MM-DD.") from None
    return int(day.timestamp()) + (86_399 if end else 0)


def _moment(text: str, what: str) -> int | None:
    """A ``datetime-local`` field, read as UTC."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise PageError(400, f"{what}: a date and time (UTC).") from None
    return int(moment.timestamp())


@dataclass(frozen=True)
class KeyQuery:
    """The key table's filters, sorting and page, read from the query string."""

    values: dict[str, str]
    flt: KeyFilter
    sort: str
    descending: bool
    limit: int
    after: tuple[int, bytes] | None

    @classmethod
    def parse(cls, params: dict[str, str], now: int) -> KeyQuery:
        values = {k: params.get(k, "").strip()[:512] for k in FILTERS}
        role = values["role"] or str(ListRole.ANY)
        if role not in ListRole.__members__.values():
            raise PageError(400, "Unknown role filter.")
        status = values["status"] or None
        if status is not None and status not in ListStatus.__members__.values():
            raise PageError(400, "Unknown status filter.")
        sort = values["sort"] or "created"
        if sort not in KEY_SORTS:
            raise PageError(400, "Unknown sort column.")
        limit = int(values["limit"]) if values["limit"].isdigit() else 50
        if limit not in PAGE_SIZES:
            limit = 50
        person = normalize_identity(values["person"]) if values["person"] else None
        flt = KeyFilter(
            user=person,
            user_domain_pattern=domain_pattern(person) if person else None,
            role=role,
            status=status,
            created_from=_day(values["created_from"], end=False),
            created_to=_day(values["created_to"], end=True),
            name=values["name"] or None,
            application=values["application"] or None,
            tag=values["tag"] or None,
            now=now,
        )
        after = None
        cursor = params.get("cursor", "")
        if cursor:
            try:
                raw = b64u_decode(cursor)
            except MalformedBase64:
                raw = b""
            if len(raw) != 8 + KEY_ID_LEN:
                raise PageError(400, "Not a cursor of this page.")
            after = (struct.unpack(">q", raw[:8])[0], raw[8:])
        return cls(values, flt, sort, values["order"] != "asc", limit, after)

    def position_of(self, record: KeyRecord) -> tuple[int, bytes]:
        value = record.created_at if self.sort == "created" else record.expires_at
        return value, record.key_id

    def cursor_of(self, record: KeyRecord) -> str:
        value, key_id = self.position_of(record)
        return b64u_encode(struct.pack(">q", value) + key_id)


@dataclass(frozen=True)
class KeyRow:
    """One line of the key table; a key the account may only use shows the recipient view.

    ``full`` is False for such a key (docs/policy.md): application, dates and tag are None
    and shown as a dash, like the API's ``list-keys`` recipient view.
    """

    key_id: str
    status: str
    owner: str
    name: str | None
    application: str | None
    created_at: int | None
    tag: str | None
    expires_at: int | None
    manageable: bool
    full: bool


def _key_row(record: KeyRecord, status: str, manageable: bool, full: bool) -> KeyRow:
    kid = keyops.key_id_text(record.key_id)
    if full:
        return KeyRow(kid, status, record.owner, record.name, record.application,
                      record.created_at, record.tag, record.expires_at, manageable, True)
    return KeyRow(kid, status, record.owner, record.name, None, None, None, None, False, False)


def key_rows(
    console: Console, session: Session, query: KeyQuery
) -> tuple[list[KeyRow], str | None]:
    """One audited page (LIST_KEYS, like the API's list-keys).

    ``admin`` and ``auditor`` accounts see every key in full; a ``user`` account sees in
    full the keys it may manage and the recipient view of the others. As in the API, the
    application and tag filters then match only keys it sees in full.
    """
    account = session.account
    sees_all = account.sees_all
    visible = None if sees_all else (account.username, domain_pattern(account.username))
    hidden_filter = not sees_all and (
        query.flt.application is not None or query.flt.tag is not None)

    def page(tx: Tx) -> tuple[list[KeyRow], str | None]:
        wanted = query.limit + 1
        after = query.after
        picked: list[tuple[KeyRecord, KeyRow, bool]] = []
        while len(picked) < wanted:
            records = list_keys(
                tx.conn, query.flt, visible_to=visible, sort=query.sort,
                descending=query.descending, limit=wanted, after=after,
            )
            for record in records:
                try:
                    console.rt.keystore.verify_seal(record.seal_payload(), record.seal)
                except IntegrityFailure:
                    # Shown, flagged, and named in the record; never acted upon. Who may
                    # see it in full cannot be told from a record that does not verify.
                    if hidden_filter:
                        continue
                    row = _key_row(record, ErrorCode.INTEGRITY_FAILURE, False, sees_all)
                    picked.append((record, row, True))
                    continue
                manageable = keyactions.may_manage(account, record, tx.now)
                full = sees_all or manageable
                if hidden_filter and not full:
                    continue
                status = str(display_status(record, tx.now))
                picked.append((record, _key_row(record, status, manageable, full), False))
            if len(records) < wanted:
                break
            after = query.position_of(records[-1])
        shown, more = picked[: query.limit], len(picked) > query.limit
        rows = [row for _record, row, _bad in shown]
        bad = [row.key_id for _record, row, is_bad in shown if is_bad]
        tx.ctx.details = {"count": len(rows), **({"integrity_failures": bad} if bad else {})}
        return rows, (query.cursor_of(shown[-1][0]) if more and shown else None)

    result: tuple[list[KeyRow], str | None] = console.run(session, Action.LIST_KEYS, page).value
    return result


def _access(line: str) -> dict[str, Any]:
    rec = json.loads(line)
    return {k: rec.get(k) for k in ("seq", "time", "user", "app", "ip", "action", "outcome",
                                     "reason", "details")}


@dataclass(frozen=True)
class KeyView:
    """The key page. ``full`` False: the recipient view (docs/policy.md), where the page
    shows id, name, owner, status and ``authorizations``, the account's own entries only."""

    record: KeyRecord
    status: str
    manageable: bool
    accesses: list[dict[str, Any]] | None
    next_before: int | None
    full: bool
    authorizations: tuple[Authorization, ...]


def key_view(console: Console, session: Session, key_id: bytes, before: int | None) -> KeyView:
    """The key page's data, audited as DESCRIBE_KEY (and its access listing)."""
    account = session.account

    def describe(tx: Tx) -> KeyView:
        tx.ctx.key = keyops.key_id_text(key_id)
        record = keyops.load_checked(tx.conn, console.rt.keystore, key_id)
        if not keyactions.may_see(account, record):
            raise NotFound("no such key")
        manageable = keyactions.may_manage(account, record, tx.now)
        accesses = None
        more_before = None
        # list-accesses is a management operation; auditors read the trail anyway.
        if manageable or session.account.sees_all:
            rows = newest_audit_lines(tx.conn, key=tx.ctx.key, limit=ACCESS_PAGE + 1,
                                      before=before)
            page = rows[:ACCESS_PAGE]
            accesses = [_access(line) for _seq, line in page]
            more_before = page[-1][0] if len(rows) > ACCESS_PAGE and page else None
            tx.ctx.details = {"accesses": len(accesses)}
        full = manageable or session.account.sees_all
        entries = record.authorizations if full else tuple(
            matching_authorizations(record, account.username))
        return KeyView(record, str(display_status(record, tx.now)), manageable, accesses,
                       more_before, full, entries)

    try:
        view: KeyView = console.run(session, Action.DESCRIBE_KEY, describe).value
    except NotFound:
        raise not_found() from None
    except IntegrityFailure:
        raise PageError(409, "This key record does not match its seal: it was changed "
                             "outside Sceau. The attempt is in the audit trail.") from None
    return view


def router(console: Console, route_class: type) -> APIRouter:
    r = APIRouter(prefix=PREFIX, route_class=route_class)
    lifecycle = console.rt.lifecycle

    def render_keys(request: Request, session: Session, *, status: int = 200,
                    error: str | None = None, notice: str | None = None) -> Response:
        query = KeyQuery.parse(dict(request.query_params), console.now())
        rows, cursor = key_rows(console, session, query)
        return console.render(
            request, "keys.html", status=status, session=session, rows=rows,
            values=query.values, next_query=query_string(query.values, cursor=cursor)
            if cursor else None, first_query=query_string(query.values) if query.after else None,
            statuses=[str(s) for s in ListStatus], roles=[str(r) for r in ListRole],
            page_sizes=PAGE_SIZES, error=error, notice=notice,
            current_query=query_string(query.values),
            sort_query={
                col: query_string(query.values, sort=col,
                                  order="asc" if query.sort == col and query.descending
                                  else "desc")
                for col in KEY_SORTS
            },
            sort=query.sort, descending=query.descending,
        )

    @r.get("/keys")
    def keys_page(request: Request) -> Response:
        session = console.require(request)
        done = request.query_params.get("done", "")
        notice = None
        if done.startswith("bulk:"):
            parts = done.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                notice = f"{parts[1]} key(s) changed, {parts[2]} refused."
        return render_keys(request, session, notice=notice)

    @r.post("/keys/bulk")
    def bulk(request: Request) -> Response:
        session = console.require(request)
        form = form_of(request)
        action = form.get("action", "")
        if action not in ("enable", "disable"):
            raise PageError(400, "Choose enable or disable.")
        ids = form_list(request, "key_id")
        if not ids:
            raise PageError(400, "Select at least one key.")
        if len(ids) > MAX_BULK:
            raise PageError(400, f"At most {MAX_BULK} keys at once.")
        key_ids = [parse_key_id(k) for k in dict.fromkeys(ids)]
        status = KeyStatus.ACTIVE if action == "enable" else KeyStatus.DISABLED
        audit = Action.ENABLE_KEY if action == "enable" else Action.DISABLE_KEY
        done, refused = console.run(
            session, audit,
            lambda tx: keyactions.bulk_set_status(lifecycle, session, tx, key_ids, status),
        ).value
        back = form.get("back", "")
        back = back if back.startswith(f"{PREFIX}/keys?") or back == f"{PREFIX}/keys" else ""
        sep = "&" if "?" in back else "?"
        raise Redirect(f"{back or PREFIX + '/keys'}{sep}done=bulk:{done}:{refused}")

    def render_key(request: Request, session: Session, key_text: str, *, status: int = 200,
                   error: str | None = None) -> Response:
        key_id = parse_key_id(key_text)
        before_text = request.query_params.get("before", "")
        before = int(before_text) if before_text.isdigit() else None
        view = key_view(console, session, key_id, before)
        done = request.query_params.get("done", "")
        # Separation of duties: what only the admin's manage-any allows waits for approval.
        approval_needed = keyactions.needs_approval(session.account, view.record,
                                                    console.now())
        return console.render(
            request, "key.html", status=status, session=session, view=view, key=view.record,
            key_text=key_text, error=error, notice=DONE.get(done),
            rules=view.record.rules.to_json() if view.full else {},
            rights=[str(r) for r in Right], approval_needed=approval_needed,
            gate_offered=approval_needed and approvals.gate_state(console.rt).offered,
        )

    @r.get("/keys/{key_text}")
    def key_page(request: Request, key_text: str) -> Response:
        session = console.require(request)
        return render_key(request, session, key_text)

    def through_approval(request: Request, session: Session, key_id: bytes,
                         ask: approvals.Ask) -> Response | None:
        """An admin adding or enabling an authorization on a key they do not manage on their
        own right: a request for a second admin (SECURITY-CASES 46), else None."""
        account = session.account
        if account.role is not Role.ADMIN:
            return None
        try:
            with console.rt.engines.read.connect() as conn:
                record = keyops.load_checked(conn, console.rt.keystore, key_id)
        except SceauError:
            return None  # the change itself refuses, audited
        if not keyactions.needs_approval(account, record, console.now()):
            return None
        key_text = keyops.key_id_text(key_id)
        try:
            if not approvals.gate_state(console.rt).offered:
                raise PageError(403, QUORUM_NOTE)
            approval_id = approvals.request(ConsoleRunner(console, session), console.rt,
                                            account.username, ask)
        except PageError as error:
            return render_key(request, session, key_text, status=error.status,
                              error=error.message)
        except SceauError as error:
            return render_key(request, session, key_text, status=error.status,
                              error=_message(error))
        raise Redirect(f"{PREFIX}/approvals?done=requested&request={approval_id}")

    def change(request: Request, session: Session, key_text: str, action: Action,
               fn: Any, done: str) -> Response:
        try:
            console.run(session, action, fn)
        except NotFound:
            raise not_found() from None
        except SceauError as error:
            return render_key(request, session, key_text, status=error.status,
                              error=_message(error))
        raise Redirect(f"{PREFIX}/keys/{key_text}?done={done}")

    @r.post("/keys/{key_text}/status")
    def key_status(request: Request, key_text: str) -> Response:
        session = console.require(request)
        key_id = parse_key_id(key_text)
        action = form_of(request).get("action", "")
        if action not in ("enable", "disable"):
            raise PageError(400, "Choose enable or disable.")
        status = KeyStatus.ACTIVE if action == "enable" else KeyStatus.DISABLED
        return change(
            request, session, key_text,
            Action.ENABLE_KEY if action == "enable" else Action.DISABLE_KEY,
            lambda tx: lifecycle.set_status(session_actor(session), keyactions.key_ref(key_id),
                                            tx, status),
            "enabled" if action == "enable" else "disabled",
        )

    @r.post("/keys/{key_text}/authorizations")
    def add_authorization(request: Request, key_text: str) -> Response:
        session = console.require(request)
        key_id = parse_key_id(key_text)
        form = form_of(request)
        rights = frozenset(Right(v) for v in form_list(request, "rights")
                           if v in Right.__members__.values())
        not_before = _moment(form.get("not_before", ""), "not before")
        not_after = _moment(form.get("not_after", ""), "not after")
        principal = form.get("principal", "").strip()
        gated = through_approval(request, session, key_id, approvals.ask_add_authorization(
            keyops.key_id_text(key_id), principal, [str(r) for r in rights], not_before,
            not_after))
        if gated is not None:
            return gated

        def add(tx: Tx) -> KeyRecord:
            params = keyactions.authorization_params(key_id, principal, rights, not_before,
                                                     not_after)
            # An admin here acts on their own right only: re-checked inside the change.
            return lifecycle.add_authorization(session_actor(session, own_rights=True),
                                               params, tx)

        return change(request, session, key_text, Action.ADD_AUTHORIZATION, add, "auth_added")

    @r.post("/keys/{key_text}/authorizations/change")
    def change_authorization(request: Request, key_text: str) -> Response:
        session = console.require(request)
        key_id = parse_key_id(key_text)
        form = form_of(request)
        action = keyactions.AUTHORIZATION_ACTIONS.get(form.get("action", ""))
        if action is None:
            raise PageError(400, "Unknown authorization action.")
        principal = form.get("principal", "")
        opening = action in keyactions.OPENING_ACTIONS
        if opening:
            gated = through_approval(request, session, key_id, approvals.ask_enable_authorization(
                keyops.key_id_text(key_id), principal))
            if gated is not None:
                return gated

        def change_entry(tx: Tx) -> KeyRecord:
            params = keyactions.principal_ref(key_id, principal)
            return keyactions.change_authorization(
                lifecycle, session_actor(session, own_rights=opening), action, params, tx)

        return change(request, session, key_text, action, change_entry, "auth_changed")

    @r.post("/keys/{key_text}/destroy")
    def destroy(request: Request, key_text: str) -> Response:
        session = console.require(request)
        key_id = parse_key_id(key_text)
        form = form_of(request)
        if form.get("confirm", "").strip() != key_text:
            return render_key(request, session, key_text, status=400,
                              error="Type the key id exactly to confirm its destruction.")
        try:
            reauthenticate(console, session, form.get("password", ""))
        except PageError as error:
            return render_key(request, session, key_text, status=error.status,
                              error=error.message)

        def destroy_now(tx: Tx) -> DestroyedKey | KeyRecord:
            params = {"key_id": keyops.key_id_text(key_id)}
            return lifecycle.destroy(session_actor(session),
                                     parse_model(DestroyKeyParams, params), tx)

        try:
            outcome = console.run(session, Action.DESTROY_KEY, destroy_now)
        except NotFound:
            raise not_found() from None
        except SceauError as error:
            return render_key(request, session, key_text, status=error.status,
                              error=_message(error))
        destroyed: DestroyedKey = outcome.value
        body = receipt_result(console.rt.keystore, console.rt.service_id, destroyed, outcome)
        return console.render(request, "receipt.html", session=session, receipt=body,
                              receipt_json=json.dumps(body, indent=2),
                              record=outcome.records[0])

    return r


def _message(error: SceauError) -> str:
    if error.reason is not None:
        return f"Refused: {error.reason}."
    return f"Refused: {error.public_detail}"  # a 5xx's detail stays in the log
