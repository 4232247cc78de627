"""Tables of the admin console: server-side sessions, login throttling, used TOTP steps.

They share :data:`sceau.store.schema.metadata`, so migrations and the schema check see one
catalogue; migration ``0002`` creates exactly these (and the keyset indexes of the key table).
"""

from __future__ import annotations

import sqlalchemy as sa

from sceau.store.schema import keys, metadata

# The session id itself never reaches the store: only its SHA-256, so a read of this table
# (a backup, an SQL injection elsewhere) does not hand out live sessions.
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("sid_hash", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(320), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_seen_at", sa.BigInteger, nullable=False),
    sa.Column("ip", sa.String(64), nullable=True),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
    sa.Index("ix_console_sessions_username", "username"),
    sa.Index("ix_console_sessions_last_seen", "last_seen_at"),
)

# Failed logins per account and per client address in a fixed window (SECURITY-CASES 39).
console_throttle = sa.Table(
    "console_throttle",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),
    sa.Column("subject", sa.String(320), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("window_start", sa.BigInteger, nullable=False),
)

# The last TOTP time step accepted per account: a code is accepted once (RFC 6238 §5.2).
console_totp_used = sa.Table(
    "console_totp_used",
    metadata,
    sa.Column("username", sa.String(320), primary_key=True),
    sa.Column("last_step", sa.BigInteger, nullable=False),
)

# OpenID Connect sign-in in flight: state (hashed), nonce and PKCE verifier, minutes long.
console_login_state = sa.Table(
    "console_login_state",
    metadata,
    sa.Column("state_hash", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(128), nullable=False),
    sa.Column("verifier", sa.String(128), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_console_login_state_created", "created_at"),
)

# Keyset pagination of the console's key table, newest first or by expiry, at 100 000 keys.
ix_keys_created_id = sa.Index("ix_keys_created_id", keys.c.created_at, keys.c.key_id)
ix_keys_expires_id = sa.Index("ix_keys_expires_id", keys.c.expires_at, keys.c.key_id)
ix_keys_status_created = sa.Index(
    "ix_keys_status_created", keys.c.status, keys.c.created_at, keys.c.key_id
)
