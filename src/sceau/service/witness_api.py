"""``POST /witness/v1/checkpoint``: this service as the countersigning witness of its peers.

Another Sceau service (``audit.witness_url``) POSTs each committed checkpoint line here. The
line must be a checkpoint whose signature verifies with the JWKS of one configured peer
(``audit.witness_peers_dir/PEER.json``: the peer's published ``/.well-known/jwks.json``,
copied there by the operator, so nothing is fetched on a request's behalf). It is then
appended to ``audit.witness_dir/peers/PEER/NODE.jsonl`` (a witness file like the local ones,
kept out of reach of the peer's database) and answered with a countersignature:

    {"countersignature": "<compact JWS>"}

a JWS by this service's current audit key, header ``{alg, kid, typ:
"sceau-countersign+jwt"}``, claims ``{iss: this service_id, peer, node, node_seq, hash,
checkpoint: SHA-256 hex of the exact line, iat}``. Whoever holds this service's JWKS can
check offline that this witness held the checkpoint at ``iat``.

The checkpoint's own signature is the authentication: only a peer's audit key can produce
one, and a replayed checkpoint changes nothing (a line equal to the file's last one is not
appended again). A refusal is ``400 {"error": "invalid_request", "detail"}``; a witness
file that cannot be written is ``503`` (the peer retries). Not audited: it acts on no key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sceau.auditlog.witness import WitnessFile, witness_settings
from sceau.core.verify import AuditPublicKey, WitnessPoint, jwks_public_keys, witness_point
from sceau.errors import ConfigError, IntegrityFailure, InvalidRequest
from sceau.keystore.base import KeyPurpose, Keystore
from sceau.service.receipts import sign_service_jws
from sceau.service.runtime import Runtime
from sceau.store.nodes import valid_node_id
from sceau.vocab import ErrorCode

__all__ = ["COUNTERSIGN_TYP", "PATH", "PeerWitness", "load_peers", "mount"]

log = logging.getLogger("sceau.audit")

PATH = "/witness/v1/checkpoint"
COUNTERSIGN_TYP = "sceau-countersign+jwt"
# A checkpoint line is about 300 bytes; anything much larger is not one.
MAX_BODY_BYTES = 4096


def load_peers(directory: Path) -> dict[str, dict[str, AuditPublicKey]]:
    """``PEER.json`` JWKS files -> peer name -> audit keys; :class:`ConfigError` if unusable."""
    peers: dict[str, dict[str, AuditPublicKey]] = {}
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix == ".json" and p.is_file())
    except OSError as exc:
        raise ConfigError(
            f"audit.witness_peers_dir: cannot read {directory} ({type(exc).__name__})"
        ) from None
    for path in files:
        if not valid_node_id(path.stem):
            raise ConfigError(f"audit.witness_peers_dir: {path.name}: name the file PEER.json "
                              "with letters, digits, '-', '_' or '.'")
        try:
            keys = jwks_public_keys(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, InvalidRequest) as exc:
            raise ConfigError(
                f"audit.witness_peers_dir: {path.name} is not a usable JWKS ({type(exc).__name__})"
            ) from None
        if not keys:
            raise ConfigError(f"audit.witness_peers_dir: {path.name} holds no signing key")
        peers[path.stem] = keys
    if not peers:
        raise ConfigError(f"audit.witness_peers_dir: no PEER.json JWKS file in {directory}")
    return peers


class PeerWitness:
    """Checks, keeps and countersigns the checkpoints of configured peers."""

    def __init__(self, peers: dict[str, dict[str, AuditPublicKey]], directory: Path,
                 keystore: Keystore, service_id: str) -> None:
        self._peers = peers
        self._directory = directory
        self._keystore = keystore
        self._service_id = service_id
        self._files: dict[str, WitnessFile] = {}
        self._lock = threading.Lock()

    def _file(self, peer: str) -> WitnessFile:
        with self._lock:
            found = self._files.get(peer)
            if found is None:
                found = WitnessFile(self._directory / peer)
                found.prepare()
                self._files[peer] = found
            return found

    def _verified(self, text: str) -> tuple[str, WitnessPoint]:
        for peer, keys in self._peers.items():
            try:
                point = witness_point(text, keys, peer)
            except IntegrityFailure:
                continue
            if point is not None and json.loads(text).get("type") == "checkpoint":
                return peer, point
        raise InvalidRequest("not a checkpoint signed by the audit key of a configured peer")

    def countersign(self, body: bytes, now: int) -> str:
        """Keep one checkpoint line and return its countersignature.

        :class:`InvalidRequest` when it is not a peer's signed checkpoint; OSError when it
        cannot be kept (then it is not countersigned).
        """
        try:
            text = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InvalidRequest("the body is not UTF-8") from None
        if "\n" in text:
            raise InvalidRequest("one checkpoint line per request")
        peer, point = self._verified(text)
        witness = self._file(peer)
        if witness.last_line(point.node) != text:
            witness.append(point.node, text)
        claims = {
            "iss": self._service_id, "peer": peer, "node": point.node,
            "node_seq": point.node_seq, "hash": point.hash,
            "checkpoint": hashlib.sha256(text.encode("utf-8")).hexdigest(), "iat": now,
        }  # fmt: skip
        return sign_service_jws(self._keystore, KeyPurpose.AUDIT, COUNTERSIGN_TYP, claims)


async def _limited_body(request: Request) -> bytes | None:
    """The body, or None once it grows past :data:`MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _refusal(status: int, error: str, detail: str) -> Response:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def mount(app: FastAPI, rt: Runtime) -> None:
    """Add the endpoint when ``audit.witness_peers_dir`` is set (404 otherwise)."""
    peers_dir = rt.config.audit.witness_peers_dir
    if not peers_dir:
        return
    witness = PeerWitness(load_peers(Path(peers_dir)),
                          witness_settings(rt.config).directory / "peers", rt.keystore,
                          rt.service_id)

    @app.post(PATH)
    async def countersign(request: Request) -> Response:
        body = await _limited_body(request)
        if body is None:
            return _refusal(413, ErrorCode.PAYLOAD_TOO_LARGE, f"at most {MAX_BODY_BYTES} bytes")
        loop = asyncio.get_running_loop()
        try:
            # The keystore signs (a PKCS#11 call) and the file is fsynced: not on the loop.
            jws = await loop.run_in_executor(None, witness.countersign, body, int(time.time()))
        except InvalidRequest as exc:
            return _refusal(400, ErrorCode.INVALID_REQUEST, exc.detail)
        except OSError as exc:
            log.error("peer witness file cannot be written (%s)", type(exc).__name__)
            return _refusal(503, "witness_unavailable", "the witness cannot keep it right now")
        return JSONResponse({"countersignature": jws}, headers={"Cache-Control": "no-store"})
