"""The audit store cannot be written (full disk): fail closed, then recover by itself.

The data dir lives on a small tmpfs that the test fills up. File modes would not do: the
tests run as root, which ignores them, and the server holds its database open anyway.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sceau.core.b64 import b64u_encode
from sceau.jose.client import ClientIdentity, sign_request
from support import Server, make_server, run_cli

OWNER = "alice@example.com"
SECRET = b"must never leave while unaudited"


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full."""
    filler = directory / "filler"
    block = b"\0" * (1 << 16)
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    # Small writes may still fit in the last partial blocks: use them up too.
    with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:
        while True:
            out.write(b"\0" * 512)
    return filler


def _decrypt(server: Server, identity: ClientIdentity, envelope: bytes) -> httpx.Response:
    token = sign_request(identity, sub=OWNER, aud=server.url, op="decrypt",
                         params={"ciphertext": b64u_encode(envelope)}, now=int(time.time()))
    return httpx.post(f"{server.url}/v1/decrypt", content=token, verify=server.cert,
                      headers={"Content-Type": "application/jose"}, timeout=30)


def test_full_disk_fails_closed_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    base = small_disk / "base"
    base.mkdir()
    server = make_server(base, start=False)
    server.log_path = tmp_path / "server.log"  # the log must not share the full disk
    server.start()
    try:
        app = server.register_app("on-a-small-disk")
        with server.client(app, OWNER) as c:
            _key, envelope = c.encrypt(SECRET)
        assert _decrypt(server, app.identity, envelope).status_code == 200

        filler = _fill(small_disk)
        refused = [_decrypt(server, app.identity, envelope) for _ in range(3)]
        for response in refused:
            assert response.status_code == 503, response.text
            problem = response.json()
            assert problem["code"] == "audit_unavailable"
            assert b64u_encode(SECRET) not in response.text and SECRET not in response.content
        ready = httpx.get(f"{server.url}/readyz", verify=server.cert, timeout=10)
        assert ready.status_code == 503 and "audit" in ready.text

        os.unlink(filler)  # writing works again: no restart, the service recovers
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = _decrypt(server, app.identity, envelope)
            if response.status_code == 200:
                break
            time.sleep(0.5)
        assert response.status_code == 200, response.text
        server.wait_ready(timeout=15)
        assert server.proc is not None and server.proc.poll() is None
        # The refused calls left nothing behind: the chain verifies without them.
        done = run_cli("audit", "verify", "--data-dir", str(server.data_dir), check=False)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    finally:
        if server.proc is not None:
            server.stop()
