"""``python -m bench.compiled``: the calls of the compiled modules, compiled against pure.

Times representative request-path calls of each module of pyproject.toml's
``[tool.sceau.compiled]`` list in two child processes, one with the mypyc extensions
(``make compile`` must have built them) and one with ``SCEAU_PURE_PYTHON=1``, alternating
rounds between the two so that background load hits both alike. Prints, per call, the best
per-call CPU time of each (``time.process_time`` over a loop) and the ratio.

``BENCH_ROUNDS`` (default 5) rounds; ``--child`` is the measuring side (internal).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

NOW = 1_800_000_000
SIG = bytes(64)


def _cases() -> dict[str, tuple[str, Callable[[], object]]]:
    """name -> (module, call): each call as the service makes it on a request."""
    from sceau.core import audit, b64, canonical, envelope, model, policy
    from sceau.vocab import Action, AuthorizationStatus, KeyStatus, Outcome, Right

    owner = "alice@corp.com"
    entries = tuple(
        model.Authorization(p, frozenset({Right.DECRYPT}), AuthorizationStatus.ACTIVE, None,
                            None, owner, NOW - 100)
        for p in ("bob@corp.com", "*@partner.org", "carol@corp.com")
    )  # fmt: skip
    record = model.KeyRecord(
        key_id=bytes(range(16)), seed=bytes(32), owner=owner, application="app1", name="n",
        tag=None, status=KeyStatus.ACTIVE, created_at=NOW - 100, expires_at=NOW + 10_000,
        not_before=None, not_after=None, destroy_at=None, destroyed_at=None, master_version=1,
        authorizations=entries, rules=model.Rules(("10.0.0.0/8",), 100), decryptions=3,
        revision=2,
    )  # fmt: skip
    caller = policy.Actor("app1", "dave@partner.org", "10.1.2.3")
    event = audit.AuditEvent(
        time_ms=NOW * 1000 + 123, app="app1", user="dave@partner.org", ip="10.1.2.3",
        action=Action.DECRYPT, outcome=Outcome.GRANTED, reason=None,
        key="AAECAwQFBgcICQoLDA0ODw", req="jti-0123456789", details={"items": 1, "aad": 12},
    )  # fmt: skip
    head = audit.ChainHead("n1", 41, "ab" * 32)
    built = audit.build_record(event, seq=42, head=head, kid="audit-1", sign=lambda _m: SIG)
    data_key, key_id, plain, aad = bytes(32), bytes(range(16)), b"x" * 1024, b"context"
    sealed = envelope.seal_gcm(data_key, key_id, plain, aad)
    text32 = b64.b64u_encode(bytes(range(32)))

    def build() -> object:
        return audit.build_record(event, seq=42, head=head, kid="audit-1", sign=lambda _m: SIG)

    # The driver on an in-memory SQLite database: one keyed read, as a request makes it.
    import sqlalchemy as sa

    from sceau.store import driver

    conn = sa.create_engine("sqlite://").connect()
    conn.exec_driver_sql("CREATE TABLE t (id BLOB PRIMARY KEY, a TEXT, b INTEGER)")
    conn.exec_driver_sql("INSERT INTO t VALUES (x'01', 'v', 1)")
    read = driver.Statement("bench_read", "SELECT id, a, b FROM t WHERE id = :id")
    by_id = {"id": b"\x01"}

    group = _writer_group()

    return {
        "writer: 32 jobs, one group commit (per job)": ("writer", group),
        "audit.build_record": ("audit", build),
        "audit.record_line": ("audit", lambda: audit.record_line(built)),
        "canonical.canonical_json(record)": ("canonical", lambda: canonical.canonical_json(built)),
        "model.KeyRecord.seal_payload": ("model", record.seal_payload),
        "model.KeyRecord.to_json": ("model", record.to_json),
        "model.dataclasses.replace": ("model", lambda: dataclasses.replace(record, revision=3)),
        "policy.decide_use": ("policy", lambda: policy.decide_use(record, caller, NOW)),
        "policy.validate_principal": ("policy", lambda: policy.validate_principal("x@corp.com")),
        "driver.run(keyed read)": ("driver", lambda: driver.run(conn, read, by_id).first()),
        "b64.b64u_encode(32 B)": ("b64", lambda: b64.b64u_encode(bytes(32))),
        "b64.b64u_decode(32 B)": ("b64", lambda: b64.b64u_decode(text32)),
        "envelope.seal_gcm(1 KiB)": ("envelope", lambda: envelope.seal_gcm(data_key, key_id,
                                                                           plain, aad)),
        "envelope.open_gcm(1 KiB)": ("envelope", lambda: envelope.open_gcm(data_key, sealed,
                                                                           aad)),
    }  # fmt: skip


GROUP = 32


def _writer_group() -> Callable[[], object]:
    """The writer's bookkeeping per job: GROUP jobs (no state change, one signed audit
    record each) queued at once and committed together, on a SQLite store without fsync
    (``synchronous=OFF``: the disk is not what is compared). The call's CPU time counts
    the writer's thread too; the figure printed is per job."""
    import atexit
    import tempfile
    from pathlib import Path

    from sceau.keystore import KeystoreSettings, init_keystore, open_keystore
    from sceau.store.db import create_engines, upgrade
    from sceau.store.writer import AuditContext, Job, Writer
    from sceau.vocab import Action

    home = Path(tempfile.mkdtemp(prefix="bench-compiled-"))
    settings = KeystoreSettings(home / "keystore")
    init_keystore(settings)
    keystore = open_keystore(settings)
    engines = create_engines(f"sqlite:///{home / 'store.db'}", synchronous="OFF")
    upgrade(engines)
    writer = Writer(engines, keystore, witness=None, checkpoint_interval_s=3600)
    writer.open()
    writer.start()
    atexit.register(writer.stop)

    def group() -> object:
        futures = [writer.submit(Job(fn=None, ctx=AuditContext(
            action=Action.DECRYPT, app="app1", user="dave@partner.org", ip="10.1.2.3",
            req=None))) for _ in range(GROUP)]  # fmt: skip
        return [f.result() for f in futures]

    return group


def _per_call_us(call: Callable[[], object], budget_s: float = 0.2) -> float:
    loops = 1
    while True:
        start = time.process_time()
        for _ in range(loops):
            call()
        spent = time.process_time() - start
        if spent >= budget_s:
            return spent / loops * 1e6
        loops *= 2 if spent < budget_s / 4 else 1 + int(budget_s / max(spent, 1e-9))


def child() -> None:
    import sceau._native

    result: dict[str, Any] = {"mode": sceau._native.MODE, "figures": {}}
    for name, (module, call) in _cases().items():
        per_job = GROUP if module == "writer" else 1
        result["figures"][name] = _per_call_us(call) / per_job
    print(json.dumps(result))


def _run(pure: bool) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("SCEAU_PURE_PYTHON", None)
    if pure:
        env["SCEAU_PURE_PYTHON"] = "1"
    out = subprocess.run([sys.executable, "-m", "bench.compiled", "--child"], env=env,
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def main() -> None:
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    best: dict[bool, dict[str, float]] = {True: {}, False: {}}
    for _ in range(rounds):
        for pure in (False, True):
            result = _run(pure)
            if result["mode"] != ("pure" if pure else "compiled"):
                raise SystemExit(f"expected {'pure' if pure else 'compiled'} modules, got "
                                 f"{result['mode']}: run `make compile` first")  # fmt: skip
            for name, value in result["figures"].items():
                best[pure][name] = min(value, best[pure].get(name, float("inf")))
    print(f"| call (best of {rounds} rounds) | pure µs | compiled µs | pure / compiled |")
    print("|---|---|---|---|")
    for name, pure_us in best[True].items():
        compiled_us = best[False][name]
        print(f"| `{name}` | {pure_us:.2f} | {compiled_us:.2f} | {pure_us / compiled_us:.2f}× |")


if __name__ == "__main__":
    child() if "--child" in sys.argv[1:] else main()
