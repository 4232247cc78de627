"""The console key table stays fast at 100 000 keys (keyset pages on indexed columns)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from sceau.store.db import create_engines, upgrade
from sceau.store.keys import KeyFilter, list_keys

N = 100_000
NOW = 1_800_000_000


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("keyset") / "k.db"
    eng = create_engines(f"sqlite:///{path}", synchronous="NORMAL")
    upgrade(eng)
    columns = ("key_id", "master_version", "owner", "application", "name", "name_lower",
               "tag", "created_at", "expires_at", "status", "rules", "decryptions",
               "revision", "seal")
    rows = [
        (os.urandom(16), 1, f"user{i % 500}@example.com", f"app{i % 7}", f"document {i}",
         f"document {i}", f"t{i % 13}", NOW - i * 7, NOW + (i * 13) % 100_000,
         "disabled" if i % 50 == 0 else "active", "{}", 0, 1, b"\0" * 32)
        for i in range(N)
    ]
    marks = ", ".join("?" for _ in columns)
    with eng.write.begin() as conn:
        # Driver-level executemany: the fixture is about query plans, not insert speed.
        conn.exec_driver_sql(f"INSERT INTO keys ({', '.join(columns)}) VALUES ({marks})", rows)
        conn.exec_driver_sql(
            "INSERT INTO authorizations (key_id, principal, rights, status, added_by, added_at)"
            " VALUES (?, '*@partner.org', 'decrypt', 'active', 'x', ?)",
            [(r[0], NOW) for r in rows[::100]],
        )
    yield eng
    eng.dispose()


@pytest.mark.parametrize(
    ("flt", "visible", "sort", "descending"),
    [
        (KeyFilter(now=NOW), None, "created", True),
        (KeyFilter(now=NOW), None, "expires", False),
        (KeyFilter(now=NOW, status="disabled"), None, "created", True),
        (KeyFilter(now=NOW, user="user7@example.com"), None, "created", True),
        (KeyFilter(now=NOW), ("bob@partner.org", "*@partner.org"), "created", True),
        (KeyFilter(now=NOW, application="app3", tag="t5"), None, "expires", True),
        (KeyFilter(now=NOW, user="user7@example.com", role="owner"), None, "expires",
         False),
    ],
)
def test_pages_are_fast_and_consistent(engines: Any, flt: KeyFilter,
                                       visible: tuple[str, str] | None, sort: str,
                                       descending: bool) -> None:
    column = "created_at" if sort == "created" else "expires_at"
    seen: set[bytes] = set()
    after = None
    last: tuple[int, bytes] | None = None
    slowest = 0.0
    with engines.read.connect() as conn:
        for number in range(5):
            started = time.perf_counter()
            page = list_keys(conn, flt, visible_to=visible, sort=sort,
                                          descending=descending, limit=50, after=after)
            slowest = max(slowest, time.perf_counter() - started)
            if not page:
                assert number > 0, "the first page is empty"
                break
            for record in page:
                position = (getattr(record, column), record.key_id)
                if last is not None:
                    assert (position < last) if descending else (position > last)
                last = position
                assert record.key_id not in seen
                seen.add(record.key_id)
            after = last
    assert slowest < 0.25, f"a page took {slowest:.3f} s"
