"""Registering, once, the audit nodes a store had before it had a registry.

Schema 0003 added ``audit_nodes``. Writers register in the transaction of their first
record, so the nodes that wrote before the upgrade are registered by ``sceau db upgrade``
(trust on upgrade, like the other seals: docs/security.md), in one audited change.
"""

from __future__ import annotations

import re

from sceau.admin import AdminSession
from sceau.store import nodes
from sceau.store.db import Engines
from sceau.store.nodes import AuditNodeRow, NodeKind
from sceau.store.writer import Tx
from sceau.vocab import Action

__all__ = ["kind_of", "register_existing_nodes", "unlisted_nodes"]

_CLI_NODE = re.compile(r"cli\d+")


def kind_of(node: str) -> NodeKind:
    """The kind a pre-registry node most likely was: ``cliN`` ids are leased by commands."""
    return NodeKind.CLI if _CLI_NODE.fullmatch(node) else NodeKind.SERVER


def unlisted_nodes(engines: Engines) -> set[str]:
    """Nodes with records or checkpoints but no registry row (read with the store alone, so
    that ``db upgrade`` opens the keystore only when there is something to register)."""
    with engines.read.connect() as conn:
        return nodes.trail_nodes(conn) - {row.node for row in nodes.list_nodes(conn)}


def register_existing_nodes(session: AdminSession) -> list[str]:
    """Seal a registry row for every node with a trail but no row; the nodes registered.

    Nothing is written (and nothing audited) when every node is registered already.
    """
    if not unlisted_nodes(session.engines):
        return []
    keystore = session.keystore

    def register(tx: Tx) -> list[str]:
        listed = {row.node for row in nodes.list_nodes(tx.conn)}
        added = sorted(nodes.trail_nodes(tx.conn) - listed)
        for node in added:
            nodes.insert_node(tx.conn, keystore.seal_row(
                AuditNodeRow(node=node, kind=str(kind_of(node)), registered_at=tx.now)))
        tx.ctx.details = {"trust_on_upgrade": {"audit_nodes": added}}
        return added

    return list(session.run(Action.ROWS_SEALED, register))
