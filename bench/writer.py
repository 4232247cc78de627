"""``python -m bench.writer [sqlite|postgres ...]``: the group-commit writer alone, in process.

Runs real :class:`~sceau.store.writer.Writer` batches (each job: a fresh ``jti``, one signed
audit record, the commit) on a fresh store and a file keystore, with no HTTP, JOSE or
handler around them, and prints the CPU time per job and the wall time per batch for batches
of 1 job (what every call pays at c=1) and of 16 jobs. On a shared machine compare two
checkouts by running both interleaved, e.g.::

    for v in /path/to/base .; do $v/.venv/bin/python -m bench.writer sqlite postgres; done

(run from the checkout whose ``bench`` to use, with ``PYTHONPATH=.``). PostgreSQL gets a
database of its own, dropped at the end.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from bench.targets import POSTGRES_ADMIN_URL
from sceau.keystore import KeystoreSettings, init_keystore, open_keystore
from sceau.store.db import create_engines, upgrade
from sceau.store.writer import AuditContext, Job, Writer
from sceau.vocab import Action

SIZES = ((1, 1500), (16, 150))
WARMUP_BATCHES = 50


@contextlib.contextmanager
def database_url(store: str, tmp: Path) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{tmp / 'writer.db'}"
        return
    name = "bench_writer_" + uuid.uuid4().hex[:8]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def measure(store: str) -> list[str]:
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_dir, database_url(store, Path(tmp_dir)) as url:
        engines = create_engines(url)
        upgrade(engines)
        settings = KeystoreSettings(Path(tmp_dir) / "keystore")
        init_keystore(settings)
        keystore = open_keystore(settings)
        writer = Writer(engines, keystore, witness=None, checkpoint_interval_s=3600)
        writer.open()
        count = 0

        def job() -> Job:
            nonlocal count
            count += 1
            ctx = AuditContext(action=Action.DECRYPT, app="bench", user="u@example.com",
                               ip=None, req=None)
            return Job(fn=lambda _tx: None, ctx=ctx, jti=("bench", f"j{count}", 2**40))

        try:
            for size, batches in SIZES:
                for _ in range(WARMUP_BATCHES):
                    writer._run_batch([job() for _ in range(size)])  # noqa: SLF001
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(batches):
                    writer._run_batch([job() for _ in range(size)])  # noqa: SLF001
                cpu_us = (time.process_time() - cpu) / (batches * size) * 1e6
                wall_us = (time.perf_counter() - wall) / batches * 1e6
                lines.append(f"{store:8} batch of {size:2}: CPU {cpu_us:6.0f} us/job, "
                             f"wall {wall_us:6.0f} us/batch")
        finally:
            writer.stop()
            keystore.close()
            engines.dispose()
    return lines


def main(argv: list[str]) -> None:
    for store in argv or ["sqlite", "postgres"]:
        for line in measure(store):
            print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
