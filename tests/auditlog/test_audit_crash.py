"""SIGKILL under load: every answered call has its record; the node continues its chain."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
from auditlog_support import db

from sceau.core.b64 import b64u_encode
from sceau.jose.client import ClientIdentity, sign_request
from support import Server, make_server, run_cli

THREADS = 8
CALLS = 50
KILL_AFTER = 120  # answered calls before the SIGKILL
OWNER = "alice@example.com"


def _load(server: Server, identity: ClientIdentity, envelope: bytes, answered: list[str],
          lock: threading.Lock, index: int) -> None:
    """Alternate encrypt and decrypt calls, each with a jti we choose, until the server dies."""
    with httpx.Client(verify=server.cert, timeout=10) as http:
        for i in range(CALLS):
            op, params = (
                ("encrypt", {"plaintext": b64u_encode(f"t{index}-{i}".encode())})
                if i % 2 == 0
                else ("decrypt", {"ciphertext": b64u_encode(envelope)})
            )
            jti = b64u_encode(f"crash-{index:02d}-{i:03d}-".encode() + bytes(8))
            token = sign_request(identity, sub=OWNER, aud=server.url, op=op,
                                 params=params, now=int(time.time()), jti=jti)
            try:
                response = http.post(f"{server.url}/v1/{op}", content=token,
                                     headers={"Content-Type": "application/jose"})
            except httpx.HTTPError:
                return  # the server is gone
            if response.status_code == 200:
                with lock:
                    answered.append(jti)


def test_sigkill_under_load_loses_no_answered_record(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    try:
        app = server.register_app("loaded")
        with server.client(app, OWNER) as c:
            _key, envelope = c.encrypt(b"decrypted under load")
        answered: list[str] = []
        lock = threading.Lock()
        threads = [threading.Thread(target=_load, args=(server, app.identity, envelope,
                                                        answered, lock, n))
                   for n in range(THREADS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()
        for t in threads:
            t.join(30)
        assert KILL_AFTER <= len(answered) < THREADS * CALLS, "the kill came too late"

        conn = db(server.data_dir)
        stored = [json.loads(r[0]) for r in conn.execute("SELECT line FROM audit_records")]
        before = max(r["node_seq"] for r in stored if r["node"] == "n1")
        reqs = {r["req"] for r in stored}
        missing = [jti for jti in answered if jti not in reqs]
        assert not missing, f"{len(missing)} answered calls have no audit record"
        conn.close()

        server.start()
        assert server.node_id() == "n1"  # the same node id, taken over from the dead process
        with server.client(app, OWNER) as c:
            key_id, _ = c.encrypt(b"after the restart")
        conn = db(server.data_dir)
        after = [json.loads(r[0]) for r in conn.execute(
            "SELECT line FROM audit_records WHERE node = 'n1' AND node_seq > ?", (before,))]
        conn.close()
        assert after and min(r["node_seq"] for r in after) == before + 1
        assert any(r["key"] == key_id for r in after)
        proc = run_cli("audit", "verify", "--json", "--data-dir", str(server.data_dir),
                       check=False)
        report = json.loads(proc.stdout)
        assert proc.returncode == 0, report["problems"]
        assert report["nodes"]["n1"] == max(r["node_seq"] for r in after)
    finally:
        if server.proc is not None:
            server.stop()
