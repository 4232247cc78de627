"""The key-lifecycle service: every operation on key records, whoever asks.

The API (``service/api/keys.py``), the console (``service/console/keypages.py`` and the
approvals it gates), the destruction sweep (``service/background.py``) and ``sceau key
purge-expired`` all act on keys through :class:`KeyLifecycle`, as an
:class:`~sceau.core.policy.Actor` inside a writer transaction (:class:`Tx`). The rules
therefore hold the same for all of them:

* management needs the owner or a ``manage`` authorization (SPEC §6), or the console
  ``admin`` role's ``manage_any``; anyone else gets ``not_found``, exactly as for a key that
  does not exist, so a stranger cannot tell the two apart;
* a destroyed key refuses every change, a key pending destruction all but its destruction
  and ``cancel-destruction`` (SPEC §10);
* every change bumps ``revision``, re-seals the record and records what changed in the
  audit ``details``.

Results are domain values (key records, pages of records, :class:`DestroyedKey`); each
caller shapes them for its own output.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sceau.config.sections import KeysSection
from sceau.core.model import Authorization, KeyRecord, Rules
from sceau.core.policy import Actor, can_manage, management_refusal, validate_principal
from sceau.core.workspace import DKE_APPLICATION
from sceau.errors import AccessDenied, InvalidRequest, NotFound
from sceau.keystore.base import Keystore
from sceau.service import keyops
from sceau.service.params import (
    AddAuthorizationParams,
    DestroyKeyParams,
    KeyOptions,
    KeyRef,
    ListAccessesParams,
    ListKeysParams,
    PrincipalRef,
    UpdateKeyParams,
    rfc3339,
)
from sceau.service.receipts import DestroyedKey
from sceau.store.audit import newest_audit_lines
from sceau.store.keys import KeyFilter, overwrite_seed, save_key
from sceau.store.keys import list_keys as list_stored_keys
from sceau.store.writer import AuditContext, Job, Tx
from sceau.vocab import Action, AuthorizationStatus, KeyStatus, Reason

__all__ = [
    "SWEEPER",
    "SYSTEM_USER",
    "KeyLifecycle",
    "DAY",
    "KeyPage",
    "actor_job",
    "domain_pattern",
]

DAY = 86_400
# The identity the service acts as on its own (the destruction sweep).
SYSTEM_USER = "sceau"
SWEEPER = Actor(app_id=None, user=SYSTEM_USER)
_TIMES = frozenset({"not_before", "not_after", "expires_at"})


def domain_pattern(user: str) -> str | None:
    """``*@domain`` for an identity with a domain, the pattern entries that may match it."""
    _, at, domain = user.rpartition("@")
    return f"*@{domain.lower()}" if at and domain else None


def actor_job(
    actor: Actor,
    action: Action,
    fn: Callable[[Tx], Any],
    *,
    key: str | None = None,
    details: dict[str, Any] | None = None,
    req: str | None = None,
    jti: tuple[str, str, int] | None = None,
) -> Job:
    """A writer job run by ``actor``: its audit record names the actor's app, user and ip."""
    ctx = AuditContext(action=action, app=actor.app_id, user=actor.user, ip=actor.ip, req=req,
                       key=key, details=details or {})
    return Job(fn=fn, ctx=ctx, jti=jti)


@dataclass(frozen=True)
class KeyPage:
    """A page of ``list-keys``: each record with whether it is shown in full, and whether
    more follow (the last record shown is where the next page starts)."""

    entries: list[tuple[KeyRecord, bool]]
    more: bool


class KeyLifecycle:
    """The operations on key records of one keystore.

    ``shredded`` is set by every destruction, so the node's background task flushes the
    SQLite WAL soon after (until a checkpoint the WAL may still hold page images with the
    old seed, docs/erasure.md). A spurious set (the job rolled back) costs one checkpoint.
    """

    def __init__(self, keystore: Keystore, keys: KeysSection) -> None:
        self.keystore = keystore
        self.default_lifetime_days = keys.default_lifetime_days
        # The length of a "day" in ``pending_days`` (``keys.day_seconds``: tests shorten it).
        self.day_seconds = keys.day_seconds
        self.shredded = threading.Event()

    # --- creation -----------------------------------------------------------------------

    def create(self, actor: Actor, options: KeyOptions, now: int) -> KeyRecord:
        """A new key (not yet stored) owned by ``actor``, from the key options of SPEC §4."""
        if options.expires_at is not None:
            if options.expires_at <= now:
                raise InvalidRequest("expires_at: must be in the future")
            expires_at = options.expires_at
        else:
            days = options.lifetime_days or self.default_lifetime_days
            expires_at = now + days * DAY
        if actor.app_id is None:
            raise InvalidRequest("a key is created by an application")
        return keyops.new_key(
            self.keystore,
            owner=actor.user,
            application=actor.app_id,
            now=now,
            expires_at=expires_at,
            name=options.name,
            tag=options.tag,
            not_before=options.not_before,
            not_after=options.not_after,
            recipients=tuple(validate_principal(p) for p in (options.recipients or ())),
            rules=keyops.rules_from(options.rules),
        )

    # --- reading ------------------------------------------------------------------------

    def _managed(self, actor: Actor, tx: Tx, key_id: bytes, *, allow_pending: bool = False,
                change: bool = True) -> KeyRecord:
        """Load, verify and authorize a key for a management operation (locked for a change).

        An unknown key and a key ``actor`` may not manage give the same ``not_found`` with
        the same detail; for an unknown id the keystore still computes one seal, so both
        paths do the same kind of work (one row read, one HMAC in the keystore) and take
        comparable time.
        """
        tx.ctx.key = keyops.key_id_text(key_id)
        record = keyops.load_checked(tx.conn, self.keystore, key_id, for_update=change)
        if not (actor.manage_any or can_manage(record, actor.user, tx.now)):
            raise NotFound("no such key")
        if change:
            reason = management_refusal(record, allow_pending=allow_pending)
            if reason is not None:
                raise AccessDenied(reason)
        return record

    def describe(self, actor: Actor, params: KeyRef, tx: Tx) -> KeyRecord:
        return self._managed(actor, tx, params.key_id, change=False)

    def list_keys(self, actor: Actor, params: ListKeysParams, tx: Tx, *,
                  after: tuple[int, bytes] | None) -> KeyPage:
        """A page of ``actor``'s keys after ``after``: in full where it may manage, else the
        recipient view.

        Filters on members a recipient does not see (``application``, ``tag``) match only
        keys shown in full, so a recipient cannot learn an owner's tag or application by
        filtering on guesses; such a page may take several reads to fill. Creation times
        are not hidden this way: the order of the list and its cursors already follow them
        (docs/policy.md).
        """
        flt = KeyFilter(
            user=actor.user,
            user_domain_pattern=domain_pattern(actor.user),
            role=str(params.role),
            status=str(params.status) if params.status is not None else None,
            created_from=params.created_from,
            created_to=params.created_to,
            name=params.name,
            application=params.application,
            tag=params.tag,
            now=tx.now,
        )
        hidden_filter = params.application is not None or params.tag is not None
        wanted = params.limit + 1  # one more than the page tells whether there is a next one
        shown: list[tuple[KeyRecord, bool]] = []
        while len(shown) < wanted:
            rows = list_stored_keys(tx.conn, flt, limit=wanted, after=after)
            for record in rows:
                # Verified before anything is decided from it (who sees what).
                self.keystore.verify_seal(record.seal_payload(), record.seal)
                full = actor.manage_any or keyops.sees_in_full(record, actor.user, tx.now)
                if full or not hidden_filter:
                    shown.append((record, full))
            if len(rows) < wanted:
                break
            after = (rows[-1].created_at, rows[-1].key_id)
        page = KeyPage(shown[: params.limit], len(shown) > params.limit)
        tx.ctx.details = {"count": len(page.entries)}
        return page

    def list_accesses(self, actor: Actor, params: ListAccessesParams, tx: Tx, *,
                      before: int | None) -> tuple[list[tuple[int, str]], bool]:
        """The audit records naming a key, newest first from ``before``: a page of
        ``(seq, line)`` and whether more follow."""
        record = self._managed(actor, tx, params.key_id, change=False)
        rows = newest_audit_lines(
            tx.conn, key=keyops.key_id_text(record.key_id), limit=params.limit + 1, before=before
        )
        page = rows[: params.limit]
        tx.ctx.details = {"count": len(page)}
        return page, len(rows) > params.limit

    # --- changes ------------------------------------------------------------------------

    def _save(self, tx: Tx, before: KeyRecord, **changes: Any) -> KeyRecord:
        after = keyops.reseal(self.keystore, before, **changes)
        save_key(tx.conn, before, after)
        tx.ctx.details = {"revision": after.revision, **tx.ctx.details}
        return after

    def update(self, actor: Actor, params: UpdateKeyParams, tx: Tx) -> KeyRecord:
        record = self._managed(actor, tx, params.key_id)
        given = params.model_fields_set - {"key_id"}
        if not given:
            raise InvalidRequest("params: name at least one field to update")
        changes: dict[str, Any] = {}
        for field in ("name", "tag", "not_before", "not_after", "expires_at"):
            if field in given:
                changes[field] = getattr(params, field)
        if "rules" in given:
            changes["rules"] = keyops.rules_from(params.rules)
        if "expires_at" in given:
            if params.expires_at is None:
                raise InvalidRequest("expires_at: a key always has a lifetime")
            # As at creation: a lifetime ends in the future. To stop a key now, disable it.
            if params.expires_at <= tx.now:
                raise InvalidRequest("expires_at: must be in the future")
        not_before = changes.get("not_before", record.not_before)
        not_after = changes.get("not_after", record.not_after)
        if not_before is not None and not_after is not None and not_after <= not_before:
            raise InvalidRequest("not_after: must be later than not_before")
        shown = {
            k: (v.to_json() if isinstance(v, Rules) else rfc3339(v) if k in _TIMES else v)
            for k, v in changes.items()
        }
        tx.ctx.details = {"changed": shown}
        return self._save(tx, record, **changes)

    def set_status(self, actor: Actor, params: KeyRef, tx: Tx, status: KeyStatus) -> KeyRecord:
        """``enable-key`` (``active``) or ``disable-key`` (``disabled``); a key already so
        is left as it is (``details.changed`` empty)."""
        record = self._managed(actor, tx, params.key_id)
        if record.status is status:
            tx.ctx.details = {"changed": {}}
            return record
        tx.ctx.details = {"changed": {"status": str(status)}}
        return self._save(tx, record, status=status)

    def enable(self, actor: Actor, params: KeyRef, tx: Tx) -> KeyRecord:
        return self.set_status(actor, params, tx, KeyStatus.ACTIVE)

    def disable(self, actor: Actor, params: KeyRef, tx: Tx) -> KeyRecord:
        return self.set_status(actor, params, tx, KeyStatus.DISABLED)

    # --- destruction --------------------------------------------------------------------

    def destroy(self, actor: Actor, params: DestroyKeyParams,
                tx: Tx) -> DestroyedKey | KeyRecord:
        """``destroy-key``: crypto-shred now (``pending_days`` 0, a :class:`DestroyedKey` for
        the receipt), or mark the key pending destruction for the sweep."""
        # SPEC §10: on a pending key only destroy-key with 0 (and cancel-destruction) may
        # act; rescheduling would let anyone with `manage` postpone an erasure indefinitely.
        record = self._managed(actor, tx, params.key_id, allow_pending=params.pending_days == 0)
        if params.pending_days == 0:
            return self._shred_as(tx, record, pending_days=0)
        destroy_at = tx.now + params.pending_days * self.day_seconds
        tx.ctx.details = {"pending_days": params.pending_days, "destroy_at": rfc3339(destroy_at)}
        return self._save(tx, record, status=KeyStatus.PENDING_DESTRUCTION,
                          destroy_at=destroy_at)

    def cancel_destruction(self, actor: Actor, params: KeyRef, tx: Tx) -> KeyRecord:
        record = self._managed(actor, tx, params.key_id, allow_pending=True)
        if record.status is not KeyStatus.PENDING_DESTRUCTION:
            raise InvalidRequest("key_id: the key is not pending destruction")
        tx.ctx.details = {"changed": {"status": str(KeyStatus.DISABLED)}}
        return self._save(tx, record, status=KeyStatus.DISABLED, destroy_at=None)

    def shred(self, tx: Tx, record: KeyRecord) -> KeyRecord:
        """Crypto-shred: overwrite the seed in place, then empty the column; keep a tombstone.

        The overwrite comes first so that the page holding the old value is rewritten even
        where the engine would otherwise just mark it free; SQLite's ``secure_delete``
        zeroes freed cells as well. Backups taken before this moment still hold the seed
        (docs/erasure.md).
        """
        overwrite_seed(tx.conn, record.key_id)
        after = keyops.reseal(
            self.keystore,
            record,
            seed=None,
            status=KeyStatus.DESTROYED,
            destroyed_at=tx.now,
            destroy_at=None,
        )
        save_key(tx.conn, record, after)
        if record.application == DKE_APPLICATION:
            # A DKE key's documents are opened by its RSA private keys, not by the seed:
            # they go too (docs/workspace.md).
            from sceau.service.workspace.admin import shred_dke_material

            tx.ctx.details["dke_versions_destroyed"] = shred_dke_material(
                self.keystore, tx, record.key_id)
        self.shredded.set()
        return after

    def _shred_as(self, tx: Tx, record: KeyRecord, **shown: Any) -> DestroyedKey:
        """:meth:`shred`, with ``shown`` added to the record's ``details``."""
        after = self.shred(tx, record)
        tx.ctx.details = {**tx.ctx.details, "revision": after.revision, **shown}
        return DestroyedKey(keyops.key_id_text(after.key_id), tx.now)

    def _load_unattended(self, tx: Tx, key_id: bytes) -> KeyRecord:
        """A key named by the sweep or the purge, re-read and locked in this transaction.

        The candidate list was read outside it: the key may have been cancelled or
        destroyed since, which is refused (and audited) rather than acted on.
        """
        tx.ctx.key = keyops.key_id_text(key_id)
        record = keyops.load_checked(tx.conn, self.keystore, key_id, for_update=True)
        if record.status is KeyStatus.DESTROYED:
            raise AccessDenied(Reason.KEY_DESTROYED)
        return record

    def destroy_due(self, tx: Tx, key_id: bytes) -> DestroyedKey:
        """The sweep's work: destroy a key whose pending destruction is due."""
        record = self._load_unattended(tx, key_id)
        if (
            record.status is not KeyStatus.PENDING_DESTRUCTION
            or record.destroy_at is None
            or record.destroy_at > tx.now
        ):
            raise InvalidRequest("key_id: the key is not due for destruction")
        return self._shred_as(tx, record, destroy_at=rfc3339(record.destroy_at))

    def destroy_expired(self, tx: Tx, key_id: bytes, cutoff: int) -> DestroyedKey:
        """``purge-expired``'s work: destroy a key whose ``expires_at`` is at or before
        ``cutoff``."""
        record = self._load_unattended(tx, key_id)
        if record.expires_at > cutoff:
            raise InvalidRequest("key_id: the key did not expire before the cutoff")
        return self._shred_as(tx, record, expires_at=rfc3339(record.expires_at))

    def sweep_job(self, key_id: bytes) -> Job:
        """The writer job destroying one due key, audited as the service itself
        (``DESTROY_KEY``, user ``sceau``, no application, ``details.sweep``)."""
        return actor_job(SWEEPER, Action.DESTROY_KEY, lambda tx: self.destroy_due(tx, key_id),
                         key=keyops.key_id_text(key_id), details={"sweep": True})

    def purge_job(self, actor: Actor, key_id: bytes, *, cutoff: int,
                  older_than_days: int) -> Job:
        """The writer job destroying one key expired by ``cutoff`` for ``purge-expired``."""
        return actor_job(actor, Action.DESTROY_KEY,
                         lambda tx: self.destroy_expired(tx, key_id, cutoff),
                         key=keyops.key_id_text(key_id),
                         details={"purge": True, "older_than_days": older_than_days})

    # --- authorizations -----------------------------------------------------------------

    @staticmethod
    def _principal(record: KeyRecord, raw: str, *, existing: bool) -> str:
        principal = validate_principal(raw)
        if principal == record.owner:
            raise InvalidRequest("principal: is the key's owner")
        if existing and record.authorization_for(principal) is None:
            raise InvalidRequest("principal: has no authorization on this key")
        return principal

    def add_authorization(self, actor: Actor, params: AddAuthorizationParams,
                          tx: Tx) -> KeyRecord:
        record = self._managed(actor, tx, params.key_id)
        principal = self._principal(record, params.principal, existing=False)
        if record.authorization_for(principal) is not None:
            raise InvalidRequest("principal: already has an authorization on this key")
        entry = Authorization(
            principal=principal,
            rights=frozenset(params.rights),
            status=AuthorizationStatus.ACTIVE,
            not_before=params.not_before,
            not_after=params.not_after,
            added_by=actor.user,
            added_at=tx.now,
        )
        tx.ctx.details = {"principal": principal,
                          "rights": sorted(str(r) for r in params.rights),
                          "not_before": rfc3339(params.not_before),
                          "not_after": rfc3339(params.not_after)}
        auths = tuple(sorted((*record.authorizations, entry), key=lambda a: a.principal))
        return self._save(tx, record, authorizations=auths)

    def remove_authorization(self, actor: Actor, params: PrincipalRef, tx: Tx) -> KeyRecord:
        record = self._managed(actor, tx, params.key_id)
        principal = self._principal(record, params.principal, existing=True)
        tx.ctx.details = {"principal": principal}
        auths = tuple(a for a in record.authorizations if a.principal != principal)
        return self._save(tx, record, authorizations=auths)

    def set_authorization_status(self, actor: Actor, params: PrincipalRef, tx: Tx,
                                 status: AuthorizationStatus) -> KeyRecord:
        record = self._managed(actor, tx, params.key_id)
        principal = self._principal(record, params.principal, existing=True)
        tx.ctx.details = {"principal": principal, "status": str(status)}
        auths = tuple(
            Authorization(a.principal, a.rights, status, a.not_before, a.not_after,
                          a.added_by, a.added_at) if a.principal == principal else a
            for a in record.authorizations
        )
        if auths == record.authorizations:
            return record
        return self._save(tx, record, authorizations=auths)

    def enable_authorization(self, actor: Actor, params: PrincipalRef, tx: Tx) -> KeyRecord:
        return self.set_authorization_status(actor, params, tx, AuthorizationStatus.ACTIVE)

    def disable_authorization(self, actor: Actor, params: PrincipalRef, tx: Tx) -> KeyRecord:
        return self.set_authorization_status(actor, params, tx, AuthorizationStatus.DISABLED)
