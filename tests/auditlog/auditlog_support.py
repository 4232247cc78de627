"""Helpers for the audit tooling tests: an independent verifier, an RFC 5424 parser, SQLite.

The verifier here uses only `cryptography`, `hashlib`, `json` and `rfc8785`, never Sceau's
code, so that a shared bug in Sceau's verifier and exporter cannot hide itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def _b64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _keys(jwks: dict[str, Any]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for jwk in jwks["keys"]:
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(_b64u(jwk["x"]))
        elif jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            x, y = (int.from_bytes(_b64u(jwk[c]), "big") for c in ("x", "y"))
            keys[jwk["kid"]] = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    return keys


def _check_sig(key: Any, sig_text: str, message: bytes) -> None:
    sig = _b64u(sig_text)
    assert len(sig) == 64, "signature length"
    if isinstance(key, Ed25519PublicKey):
        key.verify(sig, message)
    else:
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))


def independent_verify(lines: Iterable[str], jwks: dict[str, Any]) -> dict[str, int]:
    """Recompute everything from the lines; raise AssertionError naming the line, or
    return each node's last node_seq."""
    keys = _keys(jwks)
    heads: dict[str, tuple[int, str]] = {}
    seen: dict[tuple[str, int], str] = {}
    checkpoints: list[tuple[int, dict[str, Any]]] = []
    last_seq = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        assert rfc8785.dumps(obj).decode() == line.rstrip("\n"), f"line {number}: not JCS"
        skip = ("hash", "sig") if obj["type"] == "record" else ("sig",)
        digest = hashlib.sha256(rfc8785.dumps({k: v for k, v in obj.items()
                                               if k not in skip})).digest()
        try:
            if obj["type"] == "record":
                assert digest.hex() == obj["hash"], "hash"
                _check_sig(keys[obj["kid"]], obj["sig"], digest)
                assert obj["seq"] > last_seq, "seq"
                prev_seq, prev_hash = heads.get(obj["node"], (0, "0" * 64))
                assert obj["node_seq"] == prev_seq + 1, "gap"
                assert obj["prev"] == prev_hash, "link"
                last_seq = obj["seq"]
                heads[obj["node"]] = (obj["node_seq"], obj["hash"])
                seen[(obj["node"], obj["node_seq"])] = obj["hash"]
            else:
                assert obj["type"] == "checkpoint"
                _check_sig(keys[obj["kid"]], obj["sig"], digest)
                checkpoints.append((number, obj))
        except Exception as exc:
            raise AssertionError(f"line {number}: {type(exc).__name__} {exc}") from None
    for number, cp in checkpoints:
        assert seen.get((cp["node"], cp["node_seq"])) == cp["hash"], f"line {number}: checkpoint"
    return {node: head[0] for node, head in heads.items()}


# RFC 5424 §6: HEADER SP STRUCTURED-DATA [SP MSG]
_HEADER = re.compile(
    r"<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) (?P<timestamp>\S+) (?P<hostname>\S{1,255}) "
    r"(?P<app>\S{1,48}) (?P<procid>\S{1,128}) (?P<msgid>\S{1,32}) "
)
_SD_NAME = r'[!#-<>-\\^-~]{1,32}'  # PRINTUSASCII but '=', ']', '"', ' '


def parse_rfc5424(line: str) -> dict[str, Any]:
    """Parse one RFC 5424 message strictly enough to catch a malformed one."""
    m = _HEADER.match(line)
    assert m, f"bad header: {line[:80]!r}"
    rest = line[m.end():]
    elements: dict[str, dict[str, str]] = {}
    if rest.startswith("-"):
        rest = rest[1:]
    else:
        while rest.startswith("["):
            sd = re.match(_SD_NAME, rest[1:])
            assert sd, "bad SD-ID"
            sd_id, pos = sd.group(0), 1 + sd.end()
            params: dict[str, str] = {}
            while rest[pos] == " ":
                name = re.match(_SD_NAME, rest[pos + 1:])
                assert name, "bad PARAM-NAME"
                pos += 1 + name.end()
                assert rest[pos:pos + 2] == '="', "bad SD-PARAM"
                pos += 2
                value: list[str] = []
                while rest[pos] != '"':
                    if rest[pos] == "\\" and rest[pos + 1] in '"\\]':
                        value.append(rest[pos + 1])
                        pos += 2
                    else:
                        assert rest[pos] != "]", "unescaped ]"
                        value.append(rest[pos])
                        pos += 1
                params[name.group(0)] = "".join(value)
                pos += 1
            assert rest[pos] == "]", "unterminated SD-ELEMENT"
            elements[sd_id] = params
            rest = rest[pos + 1:]
    msg = rest[1:] if rest.startswith(" ") else rest
    assert "\n" not in line
    return {**m.groupdict(), "sd": elements, "msg": msg}


# --- SQLite copies --------------------------------------------------------------------------


def copy_data_dir(src: Path, dst: Path) -> Path:
    """Copy a stopped server's data dir (the database URL follows the dir)."""
    shutil.copytree(src, dst)
    return dst


def db(data_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(data_dir / "sceau.db", isolation_level=None)
    return conn


def record_rows(conn: sqlite3.Connection) -> list[tuple[int, str, int, str]]:
    """(seq, node, node_seq, line) of every record, by seq."""
    return list(conn.execute("SELECT seq, node, node_seq, line FROM audit_records ORDER BY seq"))


def checkpointed(conn: sqlite3.Connection) -> set[tuple[str, int]]:
    return set(conn.execute("SELECT node, node_seq FROM audit_checkpoints"))


def canonical(obj: dict[str, Any]) -> str:
    return rfc8785.dumps(obj).decode()
