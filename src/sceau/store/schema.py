"""Table definitions (SQLAlchemy Core). Migrations in ``migrations/`` create exactly these.

Times are integer NumericDates (audit uses milliseconds inside its stored line). JSON
documents are stored as text so that both SQLite and PostgreSQL keep them byte for byte.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

SCHEMA_REVISION = "0003"

keys = sa.Table(
    "keys",
    metadata,
    sa.Column("key_id", sa.LargeBinary(16), primary_key=True),
    sa.Column("seed", sa.LargeBinary(32), nullable=True),
    sa.Column("master_version", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(320), nullable=False),
    sa.Column("application", sa.String(64), nullable=False),
    sa.Column("name", sa.String(512), nullable=True),
    sa.Column("name_lower", sa.String(512), nullable=True),
    sa.Column("tag", sa.String(256), nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("not_before", sa.BigInteger, nullable=True),
    sa.Column("not_after", sa.BigInteger, nullable=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("destroy_at", sa.BigInteger, nullable=True),
    sa.Column("destroyed_at", sa.BigInteger, nullable=True),
    sa.Column("rules", sa.Text, nullable=False),
    sa.Column("decryptions", sa.BigInteger, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("seal", sa.LargeBinary(64), nullable=False),
    sa.Index("ix_keys_owner_created", "owner", "created_at"),
    sa.Index("ix_keys_created", "created_at"),
    sa.Index("ix_keys_status_destroy_at", "status", "destroy_at"),
    sa.Index("ix_keys_application", "application"),
    sa.Index("ix_keys_tag", "tag"),
    sa.Index("ix_keys_expires", "expires_at"),
)

authorizations = sa.Table(
    "authorizations",
    metadata,
    sa.Column("key_id", sa.LargeBinary(16), sa.ForeignKey("keys.key_id"), primary_key=True),
    sa.Column("principal", sa.String(320), primary_key=True),
    sa.Column("rights", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("not_before", sa.BigInteger, nullable=True),
    sa.Column("not_after", sa.BigInteger, nullable=True),
    sa.Column("added_by", sa.String(320), nullable=False),
    sa.Column("added_at", sa.BigInteger, nullable=False),
    sa.Index("ix_authorizations_principal", "principal"),
)

applications = sa.Table(
    "applications",
    metadata,
    sa.Column("app_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("users", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("enc_jwk", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_used_at", sa.BigInteger, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
)

app_keys = sa.Table(
    "app_keys",
    metadata,
    sa.Column("kid", sa.String(256), primary_key=True),
    sa.Column("app_id", sa.String(64), sa.ForeignKey("applications.app_id"), nullable=False),
    sa.Column("alg", sa.String(16), nullable=False),
    sa.Column("jwk", sa.Text, nullable=False),
    sa.Column("thumbprint", sa.String(64), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("added_at", sa.BigInteger, nullable=False),
    sa.Column("retired_at", sa.BigInteger, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
    sa.Index("ix_app_keys_app", "app_id"),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("username", sa.String(320), primary_key=True),
    sa.Column("password_hash", sa.String(256), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("must_change_password", sa.Boolean, nullable=False),
    sa.Column("totp_secret", sa.String(128), nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # "password", or "oidc": the identity is proven by the OpenID provider at each sign-in.
    sa.Column("auth", sa.String(16), nullable=False, server_default="password"),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
)

replay = sa.Table(
    "replay",
    metadata,
    sa.Column("iss", sa.String(64), primary_key=True),
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Index("ix_replay_expires", "expires_at"),
)

audit_records = sa.Table(
    "audit_records",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("node", sa.String(64), nullable=False),
    sa.Column("node_seq", sa.BigInteger, nullable=False),
    sa.Column("key", sa.String(32), nullable=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("line", sa.Text, nullable=False),
    sa.UniqueConstraint("node", "node_seq", name="uq_audit_node_seq"),
    sa.Index("ix_audit_key_seq", "key", "seq"),
)

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("node", sa.String(64), primary_key=True),
    sa.Column("node_seq", sa.BigInteger, primary_key=True),
    sa.Column("after_seq", sa.BigInteger, nullable=False),
    sa.Column("line", sa.Text, nullable=False),
    sa.Index("ix_checkpoints_after", "after_seq"),
)

node_leases = sa.Table(
    "node_leases",
    metadata,
    sa.Column("node", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)

# Every audit node that ever wrote (servers and CLI sessions), sealed: a node whose records
# and checkpoints were all deleted is still listed here (and in the witness).
audit_nodes = sa.Table(
    "audit_nodes",
    metadata,
    sa.Column("node", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("registered_at", sa.BigInteger, nullable=False),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
)

# Actions that could open a path to data wait here for a second admin (separation of duties).
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("approval_id", sa.String(32), primary_key=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("summary", sa.String(1000), nullable=False),
    sa.Column("requested_by", sa.String(320), nullable=False),
    sa.Column("requested_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("decided_by", sa.String(320), nullable=True),
    sa.Column("decided_at", sa.BigInteger, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
    sa.Index("ix_approvals_status", "status", "requested_at"),
)

service_meta = sa.Table(
    "service_meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# PostgreSQL only: the global audit order. SQLite derives seq inside its single writer lock.
audit_seq = sa.Sequence("audit_seq", metadata=metadata)

# The workspace key services' tables (SPEC §11) share this catalogue; migration 0004.
from sceau.store import workspace as _workspace  # noqa: E402,F401
