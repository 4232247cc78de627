"""Console: sessions, login throttling, used TOTP steps; keyset indexes on keys.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("sid_hash", sa.String(64), primary_key=True),
        sa.Column("username", sa.String(320), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_seen_at", sa.BigInteger, nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
    )
    op.create_index("ix_console_sessions_username", "console_sessions", ["username"])
    op.create_index("ix_console_sessions_last_seen", "console_sessions", ["last_seen_at"])
    op.create_table(
        "console_throttle",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("subject", sa.String(320), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "console_totp_used",
        sa.Column("username", sa.String(320), primary_key=True),
        sa.Column("last_step", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_keys_created_id", "keys", ["created_at", "key_id"])
    op.create_index("ix_keys_expires_id", "keys", ["expires_at", "key_id"])
    op.create_index("ix_keys_status_created", "keys", ["status", "created_at", "key_id"])


def downgrade() -> None:
    op.drop_index("ix_keys_status_created", "keys")
    op.drop_index("ix_keys_expires_id", "keys")
    op.drop_index("ix_keys_created_id", "keys")
    op.drop_table("console_totp_used")
    op.drop_table("console_throttle")
    op.drop_index("ix_console_sessions_last_seen", "console_sessions")
    op.drop_index("ix_console_sessions_username", "console_sessions")
    op.drop_table("console_sessions")
