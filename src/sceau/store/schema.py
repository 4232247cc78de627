"""Every table of the store (SQLAlchemy Core), in one catalogue: ``metadata``.

The migrations in ``migrations/`` create exactly these tables (a contract test compares
them). Times are integer NumericDates (audit uses milliseconds inside its stored line).
JSON documents are stored as text so that both SQLite and PostgreSQL keep them byte for
byte. Sealed tables (``sceau.core.rowseal``) end with a ``revision`` (optimistic
concurrency: a save names the revision it read) and the ``seal`` over the row.

Sections: key records; applications and their requests; console accounts and sign-in;
the audit trail and its nodes; approvals; the workspace key services (SPEC §11).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

# Column kinds that recur: who (an identity or ``*@domain`` pattern), a short status word,
# an audit node id, a hex SHA-256.
IDENTITY = sa.String(320)
STATUS = sa.String(16)
NODE = sa.String(64)
SHA256_HEX = sa.String(64)


def _times(*names: str, null: bool = False) -> list[sa.Column[Any]]:
    """NumericDate columns (seconds since the epoch, UTC)."""
    return [sa.Column(name, sa.BigInteger, nullable=null) for name in names]


def _who(name: str, *, null: bool = False, key: bool = False) -> sa.Column[Any]:
    if key:
        return sa.Column(name, IDENTITY, primary_key=True)
    return sa.Column(name, IDENTITY, nullable=null)


def _text(name: str, length: int | None = None, *, null: bool = False) -> sa.Column[Any]:
    """A string column; ``length`` None is unbounded text (JSON documents, lines)."""
    kind = sa.Text if length is None else sa.String(length)
    return sa.Column(name, kind, nullable=null)


def _key_id(*, key: bool = False) -> sa.Column[Any]:
    """The id of a key record (``keys.key_id``) in another table."""
    reference = sa.ForeignKey("keys.key_id")
    if key:
        return sa.Column("key_id", sa.LargeBinary(16), reference, primary_key=True)
    return sa.Column("key_id", sa.LargeBinary(16), reference, nullable=False)


def _sealed() -> list[sa.Column[Any]]:
    """The ``revision`` and ``seal`` columns of a sealed table."""
    return [
        sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("seal", sa.LargeBinary(64), nullable=True),
    ]


def _table(name: str, *parts: Any) -> sa.Table:
    return sa.Table(name, metadata, *parts)


# --- key records ------------------------------------------------------------------------------

keys = _table(
    "keys",
    sa.Column("key_id", sa.LargeBinary(16), primary_key=True),
    sa.Column("seed", sa.LargeBinary(32), nullable=True),
    sa.Column("master_version", sa.Integer, nullable=False),
    _who("owner"),
    _text("application", 64),
    _text("name", 512, null=True),
    _text("name_lower", 512, null=True),
    _text("tag", 256, null=True),
    *_times("created_at", "expires_at"),
    *_times("not_before", "not_after", null=True),
    _text("status", 24),
    *_times("destroy_at", "destroyed_at", null=True),
    _text("rules"),
    sa.Column("decryptions", sa.BigInteger, nullable=False),
    # A key record's revision and seal exist from its first write: no default, no NULL.
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("seal", sa.LargeBinary(64), nullable=False),
    sa.Index("ix_keys_owner_created", "owner", "created_at"),
    sa.Index("ix_keys_created", "created_at"),
    sa.Index("ix_keys_status_destroy_at", "status", "destroy_at"),
    sa.Index("ix_keys_application", "application"),
    sa.Index("ix_keys_tag", "tag"),
    sa.Index("ix_keys_expires", "expires_at"),
    # Keyset pagination of key lists, newest first or by expiry, at 100 000 keys.
    sa.Index("ix_keys_created_id", "created_at", "key_id"),
    sa.Index("ix_keys_expires_id", "expires_at", "key_id"),
    sa.Index("ix_keys_status_created", "status", "created_at", "key_id"),
)

authorizations = _table(
    "authorizations",
    _key_id(key=True),
    _who("principal", key=True),
    _text("rights", 64),
    sa.Column("status", STATUS, nullable=False),
    *_times("not_before", "not_after", null=True),
    _who("added_by"),
    *_times("added_at"),
    sa.Index("ix_authorizations_principal", "principal"),
)

# --- applications and the request ids they used -----------------------------------------------

applications = _table(
    "applications",
    sa.Column("app_id", sa.String(64), primary_key=True),
    _text("name", 200),
    _text("users"),
    sa.Column("status", STATUS, nullable=False),
    _text("enc_jwk", null=True),
    *_times("created_at"),
    *_times("last_used_at", null=True),
    *_sealed(),
)

app_keys = _table(
    "app_keys",
    sa.Column("kid", sa.String(256), primary_key=True),
    sa.Column("app_id", sa.String(64), sa.ForeignKey("applications.app_id"), nullable=False),
    _text("alg", 16),
    _text("jwk"),
    sa.Column("thumbprint", SHA256_HEX, nullable=False, unique=True),
    sa.Column("status", STATUS, nullable=False),
    *_times("added_at"),
    *_times("retired_at", null=True),
    *_sealed(),
    sa.Index("ix_app_keys_app", "app_id"),
)

replay = _table(
    "replay",
    sa.Column("iss", sa.String(64), primary_key=True),
    sa.Column("jti", sa.String(128), primary_key=True),
    *_times("expires_at"),
    sa.Index("ix_replay_expires", "expires_at"),
)

# What a node keeps in memory follows these counters: each change of a table so kept bumps
# its row in the change's transaction (row ``applications``: applications and app_keys).
store_revisions = _table(
    "store_revisions",
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

# --- console accounts and sign-in -------------------------------------------------------------

accounts = _table(
    "accounts",
    _who("username", key=True),
    _text("password_hash", 256),
    _text("role", 16),
    sa.Column("status", STATUS, nullable=False),
    sa.Column("must_change_password", sa.Boolean, nullable=False),
    _text("totp_secret", 128, null=True),
    *_times("created_at", "updated_at"),
    # "password", or "oidc": the identity is proven by the OpenID provider at each sign-in.
    sa.Column("auth", STATUS, nullable=False, server_default="password"),
    *_sealed(),
)

# The session id itself never reaches the store: only its SHA-256, so a read of this table
# (a backup, an SQL injection elsewhere) does not hand out live sessions.
console_sessions = _table(
    "console_sessions",
    sa.Column("sid_hash", SHA256_HEX, primary_key=True),
    _who("username"),
    _text("csrf", 64),
    *_times("created_at", "last_seen_at"),
    _text("ip", 64, null=True),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
    sa.Index("ix_console_sessions_username", "username"),
    sa.Index("ix_console_sessions_last_seen", "last_seen_at"),
)

# Failed logins per account and per client address in a fixed window (SECURITY-CASES 39).
console_throttle = _table(
    "console_throttle",
    sa.Column("scope", STATUS, primary_key=True),
    _who("subject", key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    *_times("window_start"),
)

# The last TOTP time step accepted per account: a code is accepted once (RFC 6238 §5.2).
console_totp_used = _table(
    "console_totp_used",
    _who("username", key=True),
    sa.Column("last_step", sa.BigInteger, nullable=False),
)

# OpenID Connect sign-in in flight: state (hashed), nonce and PKCE verifier, minutes long.
console_login_state = _table(
    "console_login_state",
    sa.Column("state_hash", SHA256_HEX, primary_key=True),
    _text("nonce", 128),
    _text("verifier", 128),
    *_times("created_at"),
    sa.Index("ix_console_login_state_created", "created_at"),
)

# --- the audit trail --------------------------------------------------------------------------

audit_records = _table(
    "audit_records",
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("node", NODE, nullable=False),
    sa.Column("node_seq", sa.BigInteger, nullable=False),
    _text("key", 32, null=True),
    sa.Column("hash", SHA256_HEX, nullable=False),
    _text("line"),
    sa.UniqueConstraint("node", "node_seq", name="uq_audit_node_seq"),
    sa.Index("ix_audit_key_seq", "key", "seq"),
)

audit_checkpoints = _table(
    "audit_checkpoints",
    sa.Column("node", NODE, primary_key=True),
    sa.Column("node_seq", sa.BigInteger, primary_key=True),
    sa.Column("after_seq", sa.BigInteger, nullable=False),
    _text("line"),
    sa.Index("ix_checkpoints_after", "after_seq"),
)

node_leases = _table(
    "node_leases",
    sa.Column("node", NODE, primary_key=True),
    _text("holder", 200),
    *_times("expires_at"),
)

# Every audit node that ever wrote (servers and CLI sessions), sealed: a node whose records
# and checkpoints were all deleted is still listed here (and in the witness).
audit_nodes = _table(
    "audit_nodes",
    sa.Column("node", NODE, primary_key=True),
    sa.Column("kind", STATUS, nullable=False),
    *_times("registered_at"),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
)

# PostgreSQL only: the global audit order. SQLite derives seq inside its single writer lock.
audit_seq = sa.Sequence("audit_seq", metadata=metadata)

# --- approvals --------------------------------------------------------------------------------

# Actions that could open a path to data wait here for a second admin (separation of duties).
approvals = _table(
    "approvals",
    sa.Column("approval_id", sa.String(32), primary_key=True),
    _text("action", 64),
    _text("payload"),
    _text("summary", 1000),
    _who("requested_by"),
    *_times("requested_at", "expires_at"),
    sa.Column("status", STATUS, nullable=False),
    _who("decided_by", null=True),
    *_times("decided_at", null=True),
    *_sealed(),
    sa.Index("ix_approvals_status", "status", "requested_at"),
)

# No query reads or writes it: it is here because the migrations create it.
service_meta = _table(
    "service_meta",
    sa.Column("name", sa.String(64), primary_key=True),
    _text("value"),
)

# --- workspace key services (SPEC §11; what each table is trusted for: store/workspace.py) ----

cse_resources = _table(
    "cse_resources",
    sa.Column("resource_name", sa.String(512), primary_key=True),
    _key_id(),
    *_times("created_at"),
)

cse_admins = _table(
    "cse_admins",
    _who("email", key=True),
    _who("added_by"),
    *_times("added_at"),
    *_sealed(),
)

dke_keys = _table(
    "dke_keys",
    sa.Column("name", sa.String(128), primary_key=True),
    _key_id(),
    *_times("created_at"),
    *_sealed(),
)

dke_key_versions = _table(
    "dke_key_versions",
    sa.Column("name", sa.String(128), sa.ForeignKey("dke_keys.name"), primary_key=True),
    sa.Column("keyid", sa.String(64), primary_key=True),
    _text("n"),
    sa.Column("e", sa.BigInteger, nullable=False),
    sa.Column("status", STATUS, nullable=False),
    *_times("created_at"),
    *_times("retired_at", null=True),
    *_sealed(),
)
