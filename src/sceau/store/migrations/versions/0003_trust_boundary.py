"""Trust boundary: seals on every row a decision reads, the audit node registry, approvals.

Existing rows get ``seal = NULL``: a NULL seal never verifies, so nothing unsealed is
trusted. ``sceau db upgrade`` seals them once with the keystore right after this migration
(trust on upgrade, docs/security.md); console sessions are not sealed but ended.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _sealed(table: str, *, revision_column: bool = True) -> None:
    with op.batch_alter_table(table) as batch:
        if revision_column:
            batch.add_column(
                sa.Column("revision", sa.BigInteger, nullable=False, server_default="1")
            )
        batch.add_column(sa.Column("seal", sa.LargeBinary(64), nullable=True))


def upgrade() -> None:
    _sealed("applications")
    _sealed("app_keys")
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("auth", sa.String(16), nullable=False, server_default="password")
        )
    _sealed("accounts")
    _sealed("console_sessions", revision_column=False)
    op.create_table(
        "audit_nodes",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("registered_at", sa.BigInteger, nullable=False),
        sa.Column("seal", sa.LargeBinary(64), nullable=True),
    )
    op.create_table(
        "approvals",
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
    )
    op.create_index("ix_approvals_status", "approvals", ["status", "requested_at"])
    op.create_table(
        "console_login_state",
        sa.Column("state_hash", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("verifier", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_console_login_state_created", "console_login_state", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_console_login_state_created", "console_login_state")
    op.drop_table("console_login_state")
    op.drop_index("ix_approvals_status", "approvals")
    op.drop_table("approvals")
    op.drop_table("audit_nodes")
    for table in ("console_sessions", "accounts", "app_keys", "applications"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("seal")
            if table != "console_sessions":
                batch.drop_column("revision")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("auth")
