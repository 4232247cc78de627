"""Host-operator administration of the workspace key services (CLI; audited like any change).

``cse_admin`` opens data: a holder may unwrap any resource through the privileged
endpoints. Granting it is therefore gated: the host operator runs ``sceau cse admins add``
(audited ``CSE_ADMIN_ADD`` with ``details.via``), and in the console it is a request that
other admins approve (``Gated.CSE_ADMIN_ADD``, service/approvals.py). Withdrawing it, and
managing DKE keys, run at once: none of them opens existing data to the one who acts.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any

from sceau.admin import Change, ChangeRunner, run_change
from sceau.core.policy import validate_principal
from sceau.errors import IntegrityFailure, InvalidRequest, NotFound
from sceau.keystore.base import Keystore
from sceau.store import workspace as ws
from sceau.store.db import Engines
from sceau.store.writer import Tx
from sceau.vocab import Action, ErrorCode

__all__ = [
    "add_cse_admin",
    "cse_admin_add_change",
    "wrap_private_key",
    "create_dke_key",
    "cse_admin_email",
    "list_cse_admins",
    "list_dke_keys",
    "remove_cse_admin",
    "retire_dke_key",
    "rotate_dke_key",
    "set_dke_key_enabled",
    "shred_dke_material",
]


def cse_admin_email(email: str) -> str:
    """One person's address, lower-cased as CSE compares emails; never a pattern."""
    if email.startswith("*"):
        raise InvalidRequest("email: cse_admin is granted to one address, not a pattern")
    if "@" not in email:
        raise InvalidRequest("email: an email address is expected")
    return validate_principal(email).lower()


def cse_admin_add_change(keystore: Keystore, email: str, added_by: str) -> Change:
    """Grant ``cse_admin`` to ``email`` (``CSE_ADMIN_ADD``): the change the CLI runs at once
    and the console runs once approved."""
    address = cse_admin_email(email)

    def add(tx: Tx) -> None:
        tx.ctx.details = {"email": address}
        if ws.get_cse_admin(tx.conn, address) is not None:
            raise InvalidRequest(f"{address} already holds cse_admin")
        ws.insert_cse_admin(tx.conn, keystore.seal_row(
            ws.CseAdminRow(address, added_by, tx.now)))

    return Change(Action.CSE_ADMIN_ADD, add)


def add_cse_admin(session: ChangeRunner, email: str, actor: str) -> None:
    """Grant ``cse_admin`` to ``email`` as the host operator (audited ``CSE_ADMIN_ADD``)."""
    run_change(session, cse_admin_add_change(session.keystore, email, actor))


def remove_cse_admin(session: ChangeRunner, email: str) -> None:
    """Withdraw ``cse_admin`` (audited ``CSE_ADMIN_REMOVE``); effective at the next call."""
    address = cse_admin_email(email)

    def remove(tx: Tx) -> None:
        tx.ctx.details = {"email": address}
        ws.delete_cse_admin(tx.conn, address)

    session.run(Action.CSE_ADMIN_REMOVE, remove)


def list_cse_admins(engines: Engines, keystore: Keystore) -> list[dict[str, Any]]:
    """Every holder, with whether its row still matches its seal (a forged row grants
    nothing and is shown as such)."""
    out = []
    with engines.read.connect() as conn:
        rows = ws.list_cse_admins(conn)
    for row in rows:
        try:
            keystore.verify_row(row)
            sealed = True
        except IntegrityFailure:
            sealed = False
        out.append({"email": row.email, "added_by": row.added_by,
                    "added_at": row.added_at, "sealed": sealed})
    return out


def wrap_private_key(session: ChangeRunner, *, email: str, key: Any, perimeter_id: str,
                     lifetime_days: int) -> tuple[bytes, str]:
    """Wrap a mailbox's S/MIME private key under a new Sceau key owned by the mailbox
    (``sceau cse wrap-private-key``; audited ``CSE_WRAP_PRIVATE_KEY``).

    Returns the wrapped private key (Gmail's ``kaclsData``) and the Sceau key id.
    """
    from sceau.service import keyops
    from sceau.service.workspace.gmail import new_mailbox_key

    if not 1 <= lifetime_days <= 36_500:
        raise InvalidRequest("lifetime: 1 to 36500 days")
    keystore = session.keystore

    def wrap(tx: Tx) -> tuple[bytes, str]:
        wrapped, record = new_mailbox_key(keystore, tx, email=email, key=key,
                                          perimeter_id=perimeter_id,
                                          lifetime_days=lifetime_days)
        return wrapped, keyops.key_id_text(record.key_id)

    result: tuple[bytes, str] = session.run(Action.CSE_WRAP_PRIVATE_KEY, wrap)
    return result


# --- DKE keys ---------------------------------------------------------------------------------

# The owner of every DKE key record: a string no bearer token can carry (it has spaces and
# no '@'), so the owner's implicit right never lets a caller decrypt; only the allowed
# principals (authorizations with `decrypt`) can.
DKE_OWNER = "dke key service"
DKE_LIFETIME_DAYS = 36_500  # a DKE key protects documents for as long as they exist


def _new_version(keystore: Any, name: str, now: int) -> ws.DkeVersionRow:
    from sceau.core.b64 import b64u_encode
    from sceau.service.workspace.dke import ACTIVE, dke_label

    keyid = secrets.token_hex(16)
    n, e = keystore.create_dke_key(dke_label(name, keyid))
    modulus = b64u_encode(n.to_bytes((n.bit_length() + 7) // 8, "big"))
    row: ws.DkeVersionRow = keystore.seal_row(
        ws.DkeVersionRow(name, keyid, modulus, e, ACTIVE, now, None))
    return row


def create_dke_key(session: ChangeRunner, name: str, allow: list[str]) -> dict[str, Any]:
    """A DKE key NAME whose allowed principals are ``allow`` (audited DKE_KEY_CREATE)."""
    from sceau.core.model import Rules
    from sceau.service import keyops
    from sceau.service.workspace.dke import DKE_APPLICATION, valid_key_name
    from sceau.store.keys import insert_keys

    valid_key_name(name)
    if not allow:
        raise InvalidRequest("--allow: name at least one principal (address or *@domain)")
    principals = tuple(sorted({validate_principal(p).lower() for p in allow}))
    keystore = session.keystore
    now = int(time.time())
    version = _new_version(keystore, name, now)
    record = keyops.new_key(
        keystore, owner=DKE_OWNER, application=DKE_APPLICATION, now=now,
        expires_at=now + DKE_LIFETIME_DAYS * 86_400, name=name, tag=None, not_before=None,
        not_after=None, recipients=principals, rules=Rules())

    def create(tx: Tx) -> None:
        tx.ctx.key = keyops.key_id_text(record.key_id)
        tx.ctx.details = {"dke_key": name, "keyid": version.keyid, "allow": list(principals)}
        if ws.get_dke_key(tx.conn, name) is not None:
            raise InvalidRequest(f"DKE key {name} exists already")
        insert_keys(tx.conn, [record])
        ws.insert_dke_key(tx.conn, keystore.seal_row(ws.DkeKeyRow(name, record.key_id, now)))
        ws.insert_dke_version(tx.conn, version)

    session.run(Action.DKE_KEY_CREATE, create)
    return {"name": name, "keyid": version.keyid, "key_id": keyops.key_id_text(record.key_id)}


def _record_of(tx: Tx, keystore: Any, name: str) -> Any:
    from sceau.service import keyops

    row = ws.get_dke_key(tx.conn, name)
    if row is None:
        raise NotFound(f"no DKE key {name}")
    keystore.verify_row(row)
    record = keyops.load_checked(tx.conn, keystore, row.key_id, for_update=True)
    tx.ctx.key = keyops.key_id_text(record.key_id)
    tx.ctx.details = {"dke_key": name}
    return record


def set_dke_key_enabled(session: ChangeRunner, name: str, enabled: bool) -> None:
    """Enable or disable a DKE key: the next decryption is refused or served at once."""
    from sceau.core.policy import management_refusal
    from sceau.errors import AccessDenied
    from sceau.service import keyops
    from sceau.store.keys import save_key
    from sceau.vocab import KeyStatus

    keystore = session.keystore

    def change(tx: Tx) -> None:
        record = _record_of(tx, keystore, name)
        refusal = management_refusal(record, allow_pending=False)
        if refusal is not None:
            raise AccessDenied(refusal)
        status = KeyStatus.ACTIVE if enabled else KeyStatus.DISABLED
        if record.status != status:
            save_key(tx.conn, record, keyops.reseal(keystore, record, status=status))

    session.run(Action.DKE_KEY_ENABLE if enabled else Action.DKE_KEY_DISABLE, change)


def rotate_dke_key(session: ChangeRunner, name: str) -> str:
    """A new version (keyid) becomes current; older ones keep decrypting until retired."""
    keystore = session.keystore
    now = int(time.time())
    version = _new_version(keystore, name, now)

    def rotate(tx: Tx) -> None:
        _record_of(tx, keystore, name)
        tx.ctx.details["keyid"] = version.keyid
        ws.insert_dke_version(tx.conn, version)

    session.run(Action.DKE_KEY_ROTATE, rotate)
    return version.keyid


def retire_dke_key(session: ChangeRunner, name: str, keyid: str) -> None:
    """Retire one version: its private key is destroyed, what it protected is shredded."""
    from sceau.service.workspace.dke import ACTIVE, RETIRED, dke_label

    keystore = session.keystore
    now = int(time.time())

    def retire(tx: Tx) -> None:
        _record_of(tx, keystore, name)
        tx.ctx.details["keyid"] = keyid
        versions = ws.dke_versions(tx.conn, name)
        target = next((v for v in versions if v.keyid == keyid), None)
        if target is None:
            raise NotFound(f"no version {keyid} of DKE key {name}")
        keystore.verify_row(target)
        active = [v for v in versions if v.status == ACTIVE]
        if target.status != ACTIVE:
            raise InvalidRequest("this version is retired already")
        if active and active[-1].keyid == keyid:
            raise InvalidRequest("the current version cannot be retired: rotate first")
        after = keystore.seal_row(dataclasses.replace(
            target, status=RETIRED, retired_at=now, revision=target.revision + 1))
        ws.save_dke_version(tx.conn, target, after)

    session.run(Action.DKE_KEY_RETIRE, retire)
    # After the commit: the row says retired before the key material is gone.
    keystore.destroy_dke_key(dke_label(name, keyid))


def shred_dke_material(keystore: Any, tx: Tx, key_id: bytes) -> list[str]:
    """When a DKE key's Sceau record is destroyed, destroy its RSA private keys too.

    Called by every destruction of a key record (``KeyLifecycle.shred``: the API, the console,
    the pending-destruction sweep, ``purge-expired``), inside that job: the versions are
    marked retired (sealed rows) and their key objects destroyed in the keystore before the
    job commits. Should the commit then fail, the record still says active but its private
    keys are gone: the next decryption fails (closed), and destroying again records it.
    Rows that do not verify are left alone: a mapping inserted by SQL destroys nothing.
    Returns the keyids whose key material was destroyed.
    """
    from sceau.service.workspace.dke import ACTIVE, RETIRED, dke_label

    row = ws.dke_key_by_key_id(tx.conn, key_id)
    if row is None:
        return []
    try:
        keystore.verify_row(row)
    except IntegrityFailure:
        return []
    destroyed = []
    for version in ws.dke_versions(tx.conn, row.name):
        try:
            keystore.verify_row(version)
        except IntegrityFailure:
            continue
        if version.status == ACTIVE:
            ws.save_dke_version(tx.conn, version, keystore.seal_row(dataclasses.replace(
                version, status=RETIRED, retired_at=tx.now, revision=version.revision + 1)))
        keystore.destroy_dke_key(dke_label(row.name, version.keyid))
        destroyed.append(version.keyid)
    return destroyed


def list_dke_keys(engines: Engines, keystore: Keystore) -> list[dict[str, Any]]:
    """Every DKE key: status, allowed principals, versions (seals checked)."""
    from sceau.core.policy import display_status
    from sceau.service import keyops

    out = []
    now = int(time.time())
    with engines.read.connect() as conn:
        for row in ws.list_dke_keys(conn):
            entry: dict[str, Any] = {"name": row.name}
            try:
                keystore.verify_row(row)
                record = keyops.load_checked(conn, keystore, row.key_id)
                versions = ws.dke_versions(conn, row.name)
                for version in versions:
                    keystore.verify_row(version)
            except IntegrityFailure:
                entry["status"] = ErrorCode.INTEGRITY_FAILURE
                out.append(entry)
                continue
            entry.update(
                key_id=keyops.key_id_text(record.key_id),
                status=str(display_status(record, now)),
                allow=[a.principal for a in record.authorizations],
                versions=[{"keyid": v.keyid, "status": v.status, "created_at": v.created_at}
                          for v in versions],
            )
            out.append(entry)
    return out
