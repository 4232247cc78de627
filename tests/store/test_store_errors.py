"""Store errors name the failing statement, never the values bound to it (both engines).

A statement that fails carries a canary in its parameters (a key name, a seed); the
exception's text, its traceback as a standard log formatter writes it, and the service's
JSON log line must not contain the canary. Without ``hide_parameters`` SQLAlchemy appends
``[parameters: ...]`` to the message, which these tests would catch.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from sceau.core.model import Authorization, KeyRecord, Rules
from sceau.service.observability import JsonFormatter
from sceau.store import driver
from sceau.store.db import Engines
from sceau.store.keys import INSERT_KEY, insert_keys, key_row
from sceau.store.schema import keys
from sceau.vocab import AuthorizationStatus, KeyStatus, Right

CANARY = f"canary-{os.urandom(8).hex()}"
SEED = b"SEED" + os.urandom(28)


def canary_key() -> KeyRecord:
    """A key record whose name, tag, owner, principal and seed are canaries."""
    entry = Authorization(principal=f"{CANARY}@example.com", rights=frozenset({Right.DECRYPT}),
                          status=AuthorizationStatus.ACTIVE, not_before=None, not_after=None,
                          added_by=f"{CANARY}@example.org", added_at=1_800_000_000)
    return KeyRecord(
        key_id=os.urandom(16), seed=SEED, master_version=1, owner=f"{CANARY}@example.org",
        application="app-1", name=CANARY, tag=CANARY, created_at=1_800_000_000,
        expires_at=1_800_086_400, not_before=None, not_after=None, status=KeyStatus.ACTIVE,
        destroy_at=None, destroyed_at=None, authorizations=(entry,), rules=Rules(None, 5),
        decryptions=0, revision=1, seal=os.urandom(32),
    )


# Each way a statement reaches the database: on the driver one by one and as executemany
# (driver.py wraps driver errors itself), and SQLAlchemy Core (the engine wraps them).
FAILING: dict[str, Callable[[sa.Connection, Any], None]] = {
    "driver run": lambda conn, record: (driver.run(conn, INSERT_KEY, key_row(record)), None)[1],
    "driver run_many": lambda conn, record: insert_keys(conn, [record]),
    "core": lambda conn, record: (conn.execute(sa.insert(keys).values(**key_row(record))),
                                  None)[1],
}


def _logged(exc: BaseException, formatter: logging.Formatter) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"sceau.test.{os.urandom(4).hex()}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        raise exc
    except sa.exc.DBAPIError:
        logger.exception("statement failed")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


@pytest.mark.parametrize("path", sorted(FAILING))
def test_failing_statement_hides_its_parameters(engines: Engines, path: str) -> None:
    record = canary_key()
    with engines.write.begin() as conn:
        insert_keys(conn, [record])
    with pytest.raises(sa.exc.IntegrityError) as failed, engines.write.begin() as conn:
        FAILING[path](conn, record)  # the same key_id again: a unique violation
    exc = failed.value
    texts = {
        "str": str(exc),
        "repr": repr(exc),
        "traceback": _logged(exc, logging.Formatter("%(message)s")),
        "service log": _logged(exc, JsonFormatter()),
    }
    for what, text in texts.items():
        assert CANARY not in text, what
        assert SEED.hex() not in text and repr(SEED)[2:-1] not in text, what
    # Still useful to an operator: the statement is named and the values are said hidden.
    assert "INSERT INTO keys" in str(exc)
    assert "parameters hidden" in str(exc)


def test_every_engine_hides_parameters(engines: Engines) -> None:
    assert engines.write.hide_parameters and engines.read.hide_parameters
