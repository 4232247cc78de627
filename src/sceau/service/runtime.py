"""The running service's parts, built once at start and handed to every request.

No module-level singletons: :class:`Runtime` is created by :func:`open_runtime` and owned by
the ASGI application; tests start real servers, each with its own runtime.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sceau.auditlog.witness import open_witness
from sceau.config import Config
from sceau.core.policy import principal_matches
from sceau.errors import (
    ApplicationDisabled,
    AuditUnavailable,
    ConfigError,
    IntegrityFailure,
    SceauError,
    UnknownApplication,
    UserNotAllowed,
)
from sceau.jose.appkeys import AppKey, EncKey, app_key_from_jwk, enc_key_from_jwk
from sceau.jose.request import RequestVerifier, TokenRefused
from sceau.keystore import open_keystore
from sceau.keystore.base import Keystore, KeystoreSettings, Row
from sceau.service.lifecycle import KeyLifecycle
from sceau.store import applications
from sceau.store.applications import ANY_USER, AppKeyRow, AppRow
from sceau.store.db import Engines, check_durability, check_schema, create_engines
from sceau.store.writer import Writer
from sceau.vocab import AppKeyStatus, AppStatus

if TYPE_CHECKING:
    from sceau.service.background import Sweeper
    from sceau.service.observability import Metrics

log = logging.getLogger("sceau.service")

APP_KEY_CACHE_S = 30.0


def keystore_settings(config: Config) -> KeystoreSettings:
    """The keystore settings of a data dir's configuration."""
    keystore = config.keystore
    return KeystoreSettings(
        config.data_dir / "keystore",
        backend=keystore.backend,
        passphrase_env=keystore.passphrase_env or None,
        pkcs11_module=keystore.pkcs11_module or None,
        pkcs11_token=keystore.pkcs11_token or None,
        pin_env=keystore.pin_env or None,
        pin_file=Path(keystore.pin_file) if keystore.pin_file else None,
        pool_size=keystore.pool_size,
    )


def user_allowed(patterns: tuple[str, ...], user: str) -> bool:
    """May an application assert ``user``? Patterns are exact identities, ``*@domain`` or ``*``.

    An empty list allows nobody: an application asserts no user unless told
    (SECURITY-CASES 47).
    """
    return any(p == ANY_USER or principal_matches(p, user) for p in patterns)


class VerifiedRows:
    """Sealed rows whose seal verified, by kind and id.

    Every use of a sealed row is checked; a row read again *exactly* as it was when its seal
    last verified (every column, the seal and the revision included) is known good without
    a second keystore operation. Any change of any byte is a miss and is verified again, so
    the cache can never vouch for something the keystore did not.
    """

    def __init__(self, keystore: Keystore, limit: int = 10_000) -> None:
        self._keystore = keystore
        self._limit = limit
        self._seen: dict[tuple[str, str], Any] = {}

    def check(self, row: Row) -> Row:
        """``row`` once verified; :class:`IntegrityFailure` otherwise (and it is forgotten)."""
        key = (str(row.seal_kind()), row.seal_id())
        if self._seen.get(key) == row:
            return row
        try:
            self._keystore.verify_row(row)
        except IntegrityFailure:
            self._seen.pop(key, None)
            raise
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen[key] = row
        return row


class AppTable:
    """The applications and their signing keys in memory, as of one store revision.

    Each group commit reads the store's ``applications`` revision once, before its first
    job (:meth:`sync`, a writer hook); every change of an application or a signing key
    bumps it in its own transaction, so a change committed by any node or admin command
    is seen by the next group commit of every node. Rows enter the table only once their
    seals verified (:class:`VerifiedRows`): a row edited with SQL alone never does,
    whether or not the revision was bumped with it, and an edit without a bump leaves the
    verified copy in use, which grants nothing the sealed row did not.

    A transaction that changed an application itself reads rows that may still roll
    back: it reads the store directly and keeps nothing, and the next group commit
    reloads. Used by the writer's thread only.
    """

    def __init__(self, rows: VerifiedRows, limit: int = 10_000) -> None:
        self._rows = rows
        self._limit = limit
        self._revision: int | None = None
        self._entries: dict[str, tuple[AppKeyRow, AppRow]] = {}

    def sync(self, conn: sa.Connection, revisions: Mapping[str, int]) -> None:
        """Follow the store's revision (a writer hook: once per group commit, with the
        counters read in its transaction)."""
        applications.apps_changed_here(conn, reset=True)
        revision = revisions.get(applications.REVISION, 0)
        if revision != self._revision:
            self._entries.clear()
            self._revision = revision

    def find(self, conn: sa.Connection, kid: str) -> tuple[AppKeyRow, AppRow] | None:
        """The signing key ``kid`` and its application, both verified; None if unknown."""
        if self._revision is None or applications.apps_changed_here(conn):
            self._revision = None
            self._entries.clear()
            return self._load(conn, kid)
        found = self._entries.get(kid)
        if found is None:
            found = self._load(conn, kid)
            if found is not None:
                if len(self._entries) >= self._limit:
                    self._entries.clear()
                self._entries[kid] = found
        return found

    def _load(self, conn: sa.Connection, kid: str) -> tuple[AppKeyRow, AppRow] | None:
        found = applications.app_check(conn, kid)
        if found is not None:
            self._rows.check(found[0])
            self._rows.check(found[1])
        return found


class AppKeyCache:
    """kid -> (app_id, parsed key). Parsing is cached; status is re-read inside every job.

    A row read from the store is used only once its seal verified: a key inserted with SQL
    alone never verifies a signature (SECURITY-CASES 45).
    """

    def __init__(self, engines: Engines, rows: VerifiedRows) -> None:
        self._engines = engines
        self.rows = rows
        self.table = AppTable(rows)
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, str, AppKey]] = {}
        self._enc: dict[str, EncKey] = {}

    def lookup(self, kid: str) -> tuple[str, AppKey] | None:
        now = time.monotonic()
        entry = self._entries.get(kid)
        if entry is not None and now - entry[0] < APP_KEY_CACHE_S:
            return entry[1], entry[2]
        try:
            with self._engines.read.connect() as conn:
                row = applications.get_app_key(conn, kid)
        except sa.exc.SQLAlchemyError:
            # No call can be answered without its audit record anyway (docs/deploy.md).
            raise AuditUnavailable("the store is unreachable") from None
        if row is None or row.status != AppKeyStatus.ACTIVE:
            with self._lock:
                self._entries.pop(kid, None)
            return None
        try:
            self.rows.check(row)
        except IntegrityFailure as failure:
            raise TokenRefused(failure, row.app_id) from None
        key = app_key_from_jwk(row.jwk)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[kid] = (now, row.app_id, key)
        return row.app_id, key

    def enc_key(self, jwk: Mapping[str, Any]) -> EncKey:
        """An application's parsed encryption key, cached by its canonical text: parsing
        validates the curve point or modulus, which costs more than a request's checks."""
        text = json.dumps(jwk, sort_keys=True)
        found = self._enc.get(text)
        if found is None:
            with self._lock:
                if len(self._enc) > 10_000:
                    self._enc.clear()
                found = self._enc[text] = enc_key_from_jwk(jwk)
        return found

    def forget(self, kid: str | None = None) -> None:
        with self._lock:
            if kid is None:
                self._entries.clear()
            else:
                self._entries.pop(kid, None)


def check_application(
    conn: sa.Connection, keys: AppKeyCache, app_id: str, kid: str, user: str
) -> EncKey | None:
    """SPEC §6 step 1: the key is still active, the app enabled, and may assert ``user``.

    Returns the application's encryption key (None when it registered none).

    Read from the :class:`AppTable` of the job's group commit, which follows the store's
    revision, so a disable or a key retirement committed by any node refuses the next
    group commit's calls. Both rows are verified against their seals when loaded: an
    application or key row written with SQL alone fails closed with ``integrity_failure``.
    """
    found = keys.table.find(conn, kid)
    if found is None:
        raise UnknownApplication("the signing key is not registered or was retired")
    key, app = found
    if key.app_id != app_id or key.status != AppKeyStatus.ACTIVE:
        raise UnknownApplication("the signing key is not registered or was retired")
    if app.status != AppStatus.ENABLED:
        raise ApplicationDisabled("this application is disabled")
    if not user_allowed(app.users, user):
        raise UserNotAllowed("this application may not act for this user")
    return keys.enc_key(app.enc_jwk) if app.enc_jwk else None


@dataclass
class Runtime:
    """Everything a request needs: configuration, store, keystore, writer, verifier, and
    the key-lifecycle service."""

    config: Config
    engines: Engines
    keystore: Keystore
    writer: Writer
    verifier: RequestVerifier
    app_keys: AppKeyCache
    lifecycle: KeyLifecycle
    started_at: float = field(default_factory=time.time)
    selftest_error: str | None = None
    # The node's Prometheus metrics, made with its app (service/app.py).
    metrics: Metrics | None = None
    # The destruction sweep, while the app runs (service/background.py).
    sweeper: Sweeper | None = None
    # When this node last recorded each application's use (see should_touch).
    _touched: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def service_id(self) -> str:
        return self.config.service_id

    @property
    def rows(self) -> VerifiedRows:
        """Every sealed row is checked through this (seals verified, unchanged rows cached)."""
        return self.app_keys.rows

    def should_touch(self, app_id: str, now: int) -> bool:
        """Record an application's last use at most once a minute per node."""
        if now - self._touched.get(app_id, 0) < 60:
            return False
        self._touched[app_id] = now
        return True

    @property
    def max_plaintext(self) -> int:
        return self.config.limits.max_plaintext_bytes

    @property
    def max_batch(self) -> int:
        return self.config.limits.max_batch_items

    def limits(self) -> Mapping[str, int]:
        limits = self.config.limits
        return {
            "max_body_bytes": limits.max_body_bytes,
            "max_batch_items": limits.max_batch_items,
            "max_plaintext_bytes": limits.max_plaintext_bytes,
            "max_token_lifetime_s": limits.max_token_lifetime_s,
            "clock_skew_s": limits.clock_skew_s,
        }

    def close(self) -> None:
        self.writer.stop()
        self.keystore.close()
        self.engines.dispose()


def open_store(config: Config) -> Engines:
    """Engines for the configured database, checked for schema version and durability."""
    engines = create_engines(
        config.database_url,
        pool_size=config.store.pool_size,
        synchronous=config.audit.synchronous,
    )
    check_schema(engines)
    check_durability(engines, synchronous=config.audit.synchronous)
    return engines


def open_runtime(config: Config, *, start_writer: bool = True, node_prefix: str = "n",
                 node_id: str | None = None) -> Runtime:
    """Open store and keystore, run the keystore self-tests, lease a node id, start the writer.

    ``node_id`` (a worker's own id, ``sceau serve --workers``) replaces ``audit.node_id``;
    empty leases a free one.
    """
    if not config.data_dir.is_dir():
        raise ConfigError(f"data dir {config.data_dir} does not exist: run `sceau init` first")
    engines = open_store(config)
    keystore = open_keystore(keystore_settings(config))
    selftest_error: str | None = None
    try:
        keystore.self_test(forced=config.keystore.selftest_fail)
    except SceauError as exc:
        selftest_error = exc.detail
        log.error("keystore self-test failed: %s", exc.detail)
    writer = Writer(
        engines,
        keystore,
        witness=open_witness(config),
        node_id=config.audit.node_id if node_id is None else node_id,
        node_prefix=node_prefix,
        max_batch=config.audit.max_batch,
        checkpoint_every=config.audit.checkpoint_every,
        checkpoint_interval_s=config.audit.checkpoint_interval_s,
    )
    rows = VerifiedRows(keystore)
    cache = AppKeyCache(engines, rows)
    writer.before_jobs.append(cache.table.sync)
    verifier = RequestVerifier(
        service_id=config.service_id,
        lookup_key=cache.lookup,
        jwe_private_jwks=keystore.jwe_private_jwks(),
        max_lifetime=config.limits.max_token_lifetime_s,
        skew=config.limits.clock_skew_s,
        max_token_bytes=config.limits.max_body_bytes,
    )
    runtime = Runtime(
        config=config, engines=engines, keystore=keystore, writer=writer, verifier=verifier,
        app_keys=cache,
        lifecycle=KeyLifecycle(keystore, config.keys),
        selftest_error=selftest_error,
    )
    if start_writer:
        writer.start()
    else:
        writer.open()
    return runtime
