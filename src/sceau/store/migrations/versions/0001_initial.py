"""Initial schema: keys, authorizations, applications, accounts, replay cache, audit.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _times(*names: str, nullable: bool = True) -> list[sa.Column]:  # type: ignore[type-arg]
    return [sa.Column(n, sa.BigInteger, nullable=nullable) for n in names]


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("key_id", sa.LargeBinary(16), primary_key=True),
        sa.Column("seed", sa.LargeBinary(32), nullable=True),
        sa.Column("master_version", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(320), nullable=False),
        sa.Column("application", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=True),
        sa.Column("name_lower", sa.String(512), nullable=True),
        sa.Column("tag", sa.String(256), nullable=True),
        *_times("created_at", "expires_at", nullable=False),
        *_times("not_before", "not_after"),
        sa.Column("status", sa.String(24), nullable=False),
        *_times("destroy_at", "destroyed_at"),
        sa.Column("rules", sa.Text, nullable=False),
        sa.Column("decryptions", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("seal", sa.LargeBinary(64), nullable=False),
    )
    op.create_index("ix_keys_owner_created", "keys", ["owner", "created_at"])
    op.create_index("ix_keys_created", "keys", ["created_at"])
    op.create_index("ix_keys_status_destroy_at", "keys", ["status", "destroy_at"])
    op.create_index("ix_keys_application", "keys", ["application"])
    op.create_index("ix_keys_tag", "keys", ["tag"])
    op.create_index("ix_keys_expires", "keys", ["expires_at"])

    op.create_table(
        "authorizations",
        sa.Column("key_id", sa.LargeBinary(16), sa.ForeignKey("keys.key_id"), primary_key=True),
        sa.Column("principal", sa.String(320), primary_key=True),
        sa.Column("rights", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        *_times("not_before", "not_after"),
        sa.Column("added_by", sa.String(320), nullable=False),
        *_times("added_at", nullable=False),
    )
    op.create_index("ix_authorizations_principal", "authorizations", ["principal"])

    op.create_table(
        "applications",
        sa.Column("app_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("users", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("enc_jwk", sa.Text, nullable=True),
        *_times("created_at", nullable=False),
        *_times("last_used_at"),
    )
    op.create_table(
        "app_keys",
        sa.Column("kid", sa.String(256), primary_key=True),
        sa.Column(
            "app_id", sa.String(64), sa.ForeignKey("applications.app_id"), nullable=False
        ),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("jwk", sa.Text, nullable=False),
        sa.Column("thumbprint", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        *_times("added_at", nullable=False),
        *_times("retired_at"),
    )
    op.create_index("ix_app_keys_app", "app_keys", ["app_id"])

    op.create_table(
        "accounts",
        sa.Column("username", sa.String(320), primary_key=True),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("must_change_password", sa.Boolean, nullable=False),
        sa.Column("totp_secret", sa.String(128), nullable=True),
        *_times("created_at", "updated_at", nullable=False),
    )
    op.create_table(
        "replay",
        sa.Column("iss", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(128), primary_key=True),
        *_times("expires_at", nullable=False),
    )
    op.create_index("ix_replay_expires", "replay", ["expires_at"])

    op.create_table(
        "audit_records",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("node_seq", sa.BigInteger, nullable=False),
        sa.Column("key", sa.String(32), nullable=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.UniqueConstraint("node", "node_seq", name="uq_audit_node_seq"),
    )
    op.create_index("ix_audit_key_seq", "audit_records", ["key", "seq"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("node_seq", sa.BigInteger, primary_key=True),
        sa.Column("after_seq", sa.BigInteger, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
    )
    op.create_index("ix_checkpoints_after", "audit_checkpoints", ["after_seq"])
    op.create_table(
        "node_leases",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        *_times("expires_at", nullable=False),
    )
    op.create_table(
        "service_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.schema.CreateSequence(sa.Sequence("audit_seq")))
