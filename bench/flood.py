"""Invalid-token flood: do valid callers stay within 2× while junk pours in? (SECURITY-CASES 43)

Issue 10 asks that "a flood of invalid tokens does not slow valid callers by more than 2×",
as a benchmark rather than a timed test. One Sceau server (SQLite, file keystore) runs
pinned to CPU 0; two generator processes run on CPU 1:

- the valid callers: :mod:`bench.loadgen` as in the main benchmark (``encrypt`` of 1 KiB,
  pre-signed requests, closed loop) at concurrency :data:`VALID_CONCURRENCY`;
- the flood (``python -m bench.flood --worker SPEC RESULT``, this module): a separate process
  on :data:`FLOOD_CONNECTIONS` keep-alive connections, each sending its next invalid request
  as soon as the previous one is answered. The connections are split round-robin over the
  classes of :data:`MIX`:

  ``garbage``        junk the structural guard refuses (no ``kid`` it could name): 401;
  ``bad-signature``  a well-formed token naming the registered ``kid``, signed with another
                     key: one ES256 verification, then refused **and audited** (SPEC §10);
  ``unknown-kid``    a well-formed token whose ``kid`` names no key: one key lookup;
  ``oversized``      a request head declaring a body over ``limits.max_body_bytes``: 413
                     before any byte of body is read. The server then waits for a body that
                     never comes, so the flood closes that connection and opens a new one
                     (one TLS handshake per refusal, as a real attacker would cause);
  ``jwe-rsa``        a well-formed compact JWE to the service's RSA key whose encrypted key
                     is random bytes: nothing but the RSA-OAEP private-key operation can
                     refuse it (SECURITY-CASES 49), so the per-address JWE budget decides
                     whether that operation runs (401) or not (429);
  ``jwe-ec``         the same to the service's EC key (ECDH-ES+A256KW).

Phases, each ``BENCH_SECONDS`` long: valid callers alone; valid callers while the flood
runs; valid callers alone again (the two "alone" runs bracket the flooded one, so a drift
in the machine's background load shows); the flood alone (the server CPU per refused
request); valid callers under a garbage-only flood (diagnostic: is the structural guard
alone cheap enough?); valid callers under a JWE-only flood on :data:`JWE_FLOOD_CONNECTIONS`
connections (the verdict of SECURITY-CASES 49: many connections, because the refusal tarpit
answers late only after the work is done, so the number of requests in flight is what the
per-address JWE budget has to bound);
then each class alone for half that time, plus the diagnostic class
``audited-garbage`` (guard-refused junk that names the registered ``kid``: audited, but no
signature work), which separates the cost of the audit write from the cost of the ES256
verification.

``python -m bench.flood`` runs it standalone (results in ``BENCH_OUT`` as
``flood-<time>.json`` / ``.md``); ``python -m bench.run`` runs it as the ``flood`` workload
(default on, ``BENCH_FLOOD=0`` skips it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import Connection, HttpError, build_request, percentile
from bench.procstat import cpu_line, cpu_seconds, loadavg

MIX = ("garbage", "bad-signature", "unknown-kid", "oversized", "jwe-rsa", "jwe-ec")
JWE_MIX = ("jwe-rsa", "jwe-ec")
#: Measured alone only: it tells the audit write apart from the signature verification.
DIAGNOSTIC = ("audited-garbage",)
FLOOD_CONNECTIONS = 32
#: The JWE-only flood: half the server's default connection cap (server.max_connections).
JWE_FLOOD_CONNECTIONS = 512
VALID_CONCURRENCY = 8
SLOWDOWN_LIMIT = 2.0
#: Declared by ``oversized`` requests: over the default 16 MiB + 64 KiB body limit.
OVERSIZED_BYTES = 64 * 1024 * 1024
SERVER_CPU = 0
GENERATOR_CPU = 1
READY_TIMEOUT_S = 60.0


# --- the invalid requests (pure) ------------------------------------------------------------


def _b64u(data: bytes) -> str:
    from sceau.core.b64 import b64u_encode

    return b64u_encode(data)


def _json_b64u(value: Any) -> str:
    return _b64u(json.dumps(value, separators=(",", ":")).encode())


def garbage_tokens() -> list[str]:
    """Tokens the structural guard refuses without naming any application (not audited)."""
    header = _json_b64u({"alg": "ES256", "typ": "sceau-req+jwt"})
    return [
        _b64u(secrets.token_bytes(1500)),                     # one segment, no dots
        "x.y.z",                                              # header is not base64url JSON
        f"{_json_b64u({'alg': 'none', 'typ': 'sceau-req+jwt'})}.{_json_b64u({})}.",
        "!!!." + _b64u(secrets.token_bytes(600)) + ".$$$",    # outside the compact alphabet
        # Duplicate member: a strict-JSON refusal.
        _b64u(b'{"alg":"ES256","alg":"ES256","typ":"sceau-req+jwt"}') + ".e30."
        + _b64u(secrets.token_bytes(64)),
        # No kid at all, otherwise plausible, the size of a real request.
        f"{header}.{_b64u(secrets.token_bytes(1600))}.{_b64u(secrets.token_bytes(64))}",
    ]


def forged_tokens(sceau: Mapping[str, Any], *, now: int, count: int = 16) -> dict[str, list[str]]:
    """``bad-signature``, ``unknown-kid`` and ``audited-garbage`` tokens for one application.

    ``sceau`` is the ``"sceau"`` part of a :class:`bench.targets.SceauTarget` spec (identity,
    user, service id). The claims are those of a real 1 KiB ``encrypt`` call, so the server
    does the same parsing work as for a valid one before it refuses.
    """
    from sceau.jose.client import ClientIdentity, generate_app_keys, sign_request

    ident = sceau["identity"]
    params = {"plaintext": _b64u(secrets.token_bytes(1024))}
    other_priv, _pub, _enc_priv, _enc_pub = generate_app_keys(ident["alg"])
    # The registered kid, signed with a key the server does not know: real signature work.
    impostor = ClientIdentity(app_id=ident["app_id"], kid=ident["kid"], alg=ident["alg"],
                              private_jwk=other_priv, enc_private_jwk=None)

    def signed(identity: ClientIdentity) -> str:
        return sign_request(identity, sub=sceau["user"], aud=sceau["service_id"], op="encrypt",
                            params=params, now=now, lifetime=300)

    out: dict[str, list[str]] = {"bad-signature": [], "unknown-kid": [], "audited-garbage": []}
    for _ in range(count):
        out["bad-signature"].append(signed(impostor))
        stranger = ClientIdentity(app_id=_b64u(secrets.token_bytes(16)),
                                  kid=_b64u(secrets.token_bytes(32)), alg=ident["alg"],
                                  private_jwk=other_priv, enc_private_jwk=None)
        out["unknown-kid"].append(signed(stranger))
        # A header member the guard forbids, beside the registered kid: refused before any
        # signature work, yet audited under the application the kid names.
        header = _json_b64u({"alg": ident["alg"], "kid": ident["kid"], "typ": "sceau-req+jwt",
                             "jku": "https://attacker.invalid/jwks"})
        _h, payload, signature = out["bad-signature"][-1].split(".")
        out["audited-garbage"].append(f"{header}.{payload}.{signature}")
    return out


def random_key_jwes(sceau: Mapping[str, Any], *, now: int, count: int = 16
                    ) -> dict[str, list[str]]:
    """``jwe-rsa`` and ``jwe-ec`` tokens: well-formed JWEs with random encrypted keys.

    Each wraps a real signed ``encrypt`` request (1 KiB) to one of the service keys
    published in ``sceau["service_jwks"]``, then replaces the encrypted key with random
    bytes of the same length. Header, IV, ciphertext and tag are those of a real JWE, so
    every structural check passes and only the private-key operation can refuse it. A class
    whose key the service does not publish (a server from before the EC key) is left out.
    """
    from sceau.core.b64 import b64u_decode
    from sceau.jose.client import ClientIdentity, sign_request, wrap_for_service

    ident = sceau["identity"]
    identity = ClientIdentity(app_id=ident["app_id"], kid=ident["kid"], alg=ident["alg"],
                              private_jwk=ident["private_jwk"], enc_private_jwk=None)
    enc = {k["alg"]: k for k in sceau["service_jwks"]["keys"] if k.get("use") == "enc"}
    params = {"plaintext": _b64u(secrets.token_bytes(1024))}
    out: dict[str, list[str]] = {}
    for cls, alg in (("jwe-rsa", "RSA-OAEP-256"), ("jwe-ec", "ECDH-ES+A256KW")):
        if alg not in enc:
            continue
        out[cls] = []
        for _ in range(count):
            jws = sign_request(identity, sub=sceau["user"], aud=sceau["service_id"],
                               op="encrypt", params=params, now=now, lifetime=300)
            parts = wrap_for_service(jws, enc[alg]).split(".")
            parts[1] = _b64u(secrets.token_bytes(len(b64u_decode(parts[1]))))
            out[cls].append(".".join(parts))
    return out


def oversized_head(host: str, port: int, path: str, declared: int = OVERSIZED_BYTES) -> bytes:
    """A request head declaring ``declared`` body bytes, sent without its body."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/jose\r\nContent-Length: {declared}\r\n\r\n").encode()


def assign_classes(mix: Sequence[str], connections: int) -> list[str]:
    """The class of each connection: round-robin over ``mix``."""
    if not mix or connections < 1:
        raise ValueError("need at least one class and one connection")
    return [mix[i % len(mix)] for i in range(connections)]


def merge_statuses(by_class: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """``{"401": n, "413": m, ...}`` over all classes of a flood result."""
    total: dict[str, int] = {}
    for stats in by_class.values():
        for status, n in stats["statuses"].items():
            total[status] = total.get(status, 0) + int(n)
    return dict(sorted(total.items()))


# --- the flood process ----------------------------------------------------------------------


def _snapshot(server_pid: int) -> dict[str, Any]:
    return {"t": time.perf_counter(), "gen": time.process_time(),
            "server": cpu_seconds(server_pid), "cpu0": cpu_line(SERVER_CPU),
            "cpu1": cpu_line(GENERATOR_CPU)}


def window_figures(start: Mapping[str, Any], end: Mapping[str, Any]) -> dict[str, float]:
    """CPU figures of a window from two :func:`_snapshot` dicts (``cpuN`` = busy, idle, steal)."""
    elapsed = end["t"] - start["t"]
    server = end["server"] - start["server"]

    def frac(value: float) -> float:
        return value / elapsed if elapsed > 0 else 0.0

    return {
        "duration_s": elapsed,
        "server_cpu_s": server,
        "server_cpu_frac": frac(server),
        "cpu0_others_frac": frac(max(0.0, end["cpu0"][0] - start["cpu0"][0] - server)),
        "cpu0_steal_frac": frac(end["cpu0"][2] - start["cpu0"][2]),
        "cpu1_busy_frac": frac(end["cpu1"][0] - start["cpu1"][0]),
        "cpu1_steal_frac": frac(end["cpu1"][2] - start["cpu1"][2]),
        "generator_cpu_frac": frac(end["gen"] - start["gen"]),
    }


async def flood(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Flood until SIGTERM (or ``max_seconds``); the counts and CPU figures of the window."""
    context = ssl.create_default_context(cafile=spec["cafile"])
    context.set_alpn_protocols(["http/1.1"])
    host, port, path = spec["host"], spec["port"], spec["path"]
    headers = {"Content-Type": "application/jose"}
    requests = {cls: [build_request(host, port, path, headers, t.encode("ascii")) for t in toks]
                for cls, toks in spec["tokens"].items()}
    requests["oversized"] = [oversized_head(host, port, path)]
    classes = assign_classes(spec["mix"], spec["connections"])
    conns: list[Connection | None] = list(await asyncio.gather(
        *(Connection.open(host, port, context) for _ in classes)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(spec["max_seconds"], stop.set)
    statuses: dict[str, dict[str, int]] = {cls: {} for cls in spec["mix"]}
    latencies: dict[str, list[float]] = {cls: [] for cls in spec["mix"]}
    handshakes = 0
    end: dict[str, Any] = {}

    async def worker(index: int, cls: str) -> None:
        nonlocal handshakes
        raws = requests[cls]
        i = index
        while not end:
            raw = raws[i % len(raws)]
            i += 1
            try:
                conn = conns[index]
                if conn is None:
                    conn = conns[index] = await Connection.open(host, port, context)
                    handshakes += 1
                t0 = time.perf_counter()
                status, _body = await conn.request(raw)
                key = str(status)
            except (HttpError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                key = f"error:{type(exc).__name__}"
                t0 = time.perf_counter()
                await _drop(conns, index)
                await asyncio.sleep(0.01)  # a refused connection must not become a busy loop
            if end:
                return  # answered after the window closed: not counted
            statuses[cls][key] = statuses[cls].get(key, 0) + 1
            latencies[cls].append(time.perf_counter() - t0)
            if cls == "oversized":
                # The server now waits for the declared body: this connection is spent.
                await _drop(conns, index)

    start = _snapshot(spec["server_pid"])
    load0 = loadavg()
    tasks = [asyncio.create_task(worker(i, cls)) for i, cls in enumerate(classes)]
    Path(spec["ready_path"]).write_text("ready\n")
    await stop.wait()
    end.update(_snapshot(spec["server_pid"]))
    _done, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    for index in range(len(conns)):
        await _drop(conns, index)
    figures = window_figures(start, end)
    elapsed = figures["duration_s"]
    by_class: dict[str, dict[str, Any]] = {}
    for cls in spec["mix"]:
        answered = sum(n for s, n in statuses[cls].items() if s.isdigit())
        refused = sum(n for s, n in statuses[cls].items() if s.isdigit() and s != "200")
        lat = sorted(latencies[cls])
        by_class[cls] = {
            "statuses": dict(sorted(statuses[cls].items())),
            "answered": answered,
            "refused": refused,
            "refused_per_s": refused / elapsed if elapsed > 0 else 0.0,
            "lat_ms": {"p50": percentile(lat, 0.5) * 1000, "p99": percentile(lat, 0.99) * 1000},
        }
    refused = sum(c["refused"] for c in by_class.values())
    accepted = sum(c["statuses"].get("200", 0) for c in by_class.values())
    return {
        **figures,
        "connections": spec["connections"],
        "mix": list(spec["mix"]),
        "by_class": by_class,
        "statuses": merge_statuses(by_class),
        "refused": refused,
        "refused_per_s": refused / elapsed if elapsed > 0 else 0.0,
        "accepted": accepted,  # any 200 here is a bug in the server's checks
        "reconnects": handshakes,
        "server_cpu_ms_per_refusal": (figures["server_cpu_s"] / refused * 1000
                                      if refused else float("nan")),
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
    }


async def _drop(conns: list[Connection | None], index: int) -> None:
    conn = conns[index]
    conns[index] = None
    if conn is not None:
        conn.close()
        with contextlib.suppress(OSError, asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(conn.writer.wait_closed(), 1)


def worker_main(argv: Sequence[str]) -> int:
    """``python -m bench.flood --worker SPEC.json RESULT.json`` (started by :func:`run_flood`)."""
    spec = json.loads(Path(argv[0]).read_text())
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(flood(spec))
    Path(argv[1]).write_text(json.dumps(result, indent=1))
    return 0


# --- summary (pure) -------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return sum(clean) / len(clean) if clean else None


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def summarize(phases: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The figures a reader wants from the phases of :func:`run_flood`.

    "Alone" is the mean of the runs before and after the flooded one. Slowdowns are both
    "higher is worse": throughput alone / with the flood, and p99 with the flood / alone.
    """
    alone = [phases[k]["valid"] for k in ("alone_before", "alone_after") if k in phases]
    flooded = phases.get("flooded", {})
    valid, fl = flooded.get("valid"), flooded.get("flood")
    out: dict[str, Any] = {
        "rps_alone": _mean([r["rps"] for r in alone]),
        "p50_alone": _mean([r["lat_ms"]["p50"] for r in alone]),
        "p99_alone": _mean([r["lat_ms"]["p99"] for r in alone]),
        "cpu_ms_per_valid_alone": _mean([r["server_cpu_ms_per_req"] for r in alone]),
    }
    if valid is not None:
        out.update(rps_flooded=valid["rps"], p50_flooded=valid["lat_ms"]["p50"],
                   p99_flooded=valid["lat_ms"]["p99"],
                   valid_errors=valid["errors"])
        out["throughput_slowdown"] = _div(out["rps_alone"], valid["rps"])
        out["p50_slowdown"] = _div(valid["lat_ms"]["p50"], out["p50_alone"])
        out["p99_slowdown"] = _div(valid["lat_ms"]["p99"], out["p99_alone"])
        marks = [out["throughput_slowdown"], out["p99_slowdown"]]
        out["within_limit"] = (None if None in marks
                               else all(m <= SLOWDOWN_LIMIT for m in marks if m is not None))
    if fl is not None:
        out.update(flood_refused_per_s=fl["refused_per_s"], flood_statuses=fl["statuses"],
                   flood_accepted=fl["accepted"])
        if valid is not None and out["cpu_ms_per_valid_alone"] is not None:
            # The server CPU of the flooded window beyond what its valid calls cost alone,
            # spread over the refusals of that window: a cross-check of the flood-only phase.
            ok = valid["requests"] - valid["errors"]
            extra = valid["server_cpu_s"] - ok * out["cpu_ms_per_valid_alone"] / 1000
            out["cpu_ms_per_refusal_flooded_est"] = _div(
                extra * 1000, fl["refused_per_s"] * valid["duration_s"])
        out["flood_by_class"] = {
            cls: {"refused_per_s": c["refused_per_s"], "lat_ms": c["lat_ms"]}
            for cls, c in fl["by_class"].items()
        }
    garbage = phases.get("flooded_garbage", {}).get("valid")
    if garbage is not None:
        out["garbage_only"] = {
            "rps": garbage["rps"], "p99": garbage["lat_ms"]["p99"],
            "throughput_slowdown": _div(out["rps_alone"], garbage["rps"]),
            "p99_slowdown": _div(garbage["lat_ms"]["p99"], out["p99_alone"]),
            "refused_per_s": phases["flooded_garbage"]["flood"]["refused_per_s"],
        }
    jwe_phase = phases.get("flooded_jwe", {})
    jwe_valid = jwe_phase.get("valid")
    if jwe_valid is not None:
        jwe_flood = jwe_phase["flood"]
        seconds = jwe_flood["duration_s"]
        ops = jwe_phase.get("jwe", {})
        marks = [_div(out["rps_alone"], jwe_valid["rps"]),
                 _div(jwe_valid["lat_ms"]["p99"], out["p99_alone"])]
        out["jwe_only"] = {
            "connections": jwe_flood["connections"],
            "rps": jwe_valid["rps"], "p99": jwe_valid["lat_ms"]["p99"],
            "throughput_slowdown": marks[0], "p99_slowdown": marks[1],
            "within_limit": (None if None in marks
                             else all(m <= SLOWDOWN_LIMIT for m in marks if m is not None)),
            "refused_per_s": jwe_flood["refused_per_s"], "statuses": jwe_flood["statuses"],
            "accepted": jwe_flood["accepted"], "valid_errors": jwe_valid["errors"],
            # In this flood a 401 is a private-key operation that failed and a 429 a
            # refusal by the budget before one: their rates, over the flood's window.
            "private_key_ops_per_s": _div(jwe_flood["statuses"].get("401", 0), seconds),
            "budget_refusals_per_s": _div(jwe_flood["statuses"].get("429", 0), seconds),
            # The same split from the server's own counters (/metrics), over the phase.
            "private_key_op_share": _div(ops.get("private_key_ops"),
                                         (ops.get("private_key_ops") or 0.0)
                                         + (ops.get("budget_refusals") or 0.0)),
        }
    only = phases.get("flood_only", {}).get("flood")
    if only is not None:
        out["cpu_ms_per_refusal"] = only["server_cpu_ms_per_refusal"]
        out["flood_only_refused_per_s"] = only["refused_per_s"]
    out["by_class"] = {
        cls: {
            "refused_per_s": ph["flood"]["refused_per_s"],
            "statuses": ph["flood"]["statuses"],
            "cpu_ms_per_refusal": ph["flood"]["server_cpu_ms_per_refusal"],
            "server_cpu_frac": ph["flood"]["server_cpu_frac"],
            "audit_jobs_per_refusal": _div(ph.get("writer", {}).get("jobs"),
                                           ph["flood"]["refused"]),
            "private_key_ops_per_refusal": _div(ph.get("jwe", {}).get("private_key_ops"),
                                                ph["flood"]["refused"]),
            "lat_ms": ph["flood"]["by_class"][cls]["lat_ms"],
            "cpu0_others_frac": ph["flood"]["cpu0_others_frac"],
            "generator_cpu_frac": ph["flood"]["generator_cpu_frac"],
            "cpu1_others_frac": max(0.0, ph["flood"]["cpu1_busy_frac"]
                                    - ph["flood"]["generator_cpu_frac"]),
        }
        for cls, ph in phases.get("classes", {}).items()
    }
    floods = [ph["flood"] for ph in _flood_phases(phases)]
    valids = [*alone, *([valid] if valid is not None else []),
              *([garbage] if garbage is not None else [])]
    out["generators"] = {
        "valid_cpu_frac_max": max((r["generator_cpu_frac"] for r in valids), default=None),
        "flood_cpu_frac_max": max((f["generator_cpu_frac"] for f in floods), default=None),
        "cpu1_busy_frac_max": max((f["cpu1_busy_frac"] for f in floods), default=None),
    }
    out["contention"] = {
        "cpu0_others_frac_max": max((r["cpu0_others_frac"] for r in [*valids, *floods]),
                                    default=None),
        "cpu0_steal_frac_max": max((r.get("cpu0_steal_frac", 0.0) for r in [*valids, *floods]),
                                   default=None),
        "cpu1_steal_frac_max": max((f["cpu1_steal_frac"] for f in floods), default=None),
    }
    return out


def _flood_phases(phases: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out = [phases[k] for k in ("flooded", "flood_only", "flooded_garbage", "flooded_jwe")
           if "flood" in phases.get(k, {})]
    return out + list(phases.get("classes", {}).values())


# --- orchestration --------------------------------------------------------------------------


def es256_verify_us(rounds: int = 2000) -> float:
    """CPU µs of one failing ES256 verification with ``cryptography`` on this machine."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    message = secrets.token_bytes(2000)
    signature = other.sign(message, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    started = time.process_time()
    for _ in range(rounds):
        with contextlib.suppress(InvalidSignature):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    return (time.process_time() - started) / rounds * 1e6


class FloodProcess:
    """One flood worker process on the generator core; started, then stopped by SIGTERM."""

    def __init__(self, spec: Mapping[str, Any], workdir: Path, name: str) -> None:
        self.spec_path = workdir / f"flood-{name}.spec.json"
        self.out_path = workdir / f"flood-{name}.result.json"
        self.ready = workdir / f"flood-{name}.ready"
        full = {**spec, "ready_path": str(self.ready)}
        self.spec_path.write_text(json.dumps(full))
        self.spec_path.chmod(0o600)
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(GENERATOR_CPU), sys.executable, "-m", "bench.flood",
             "--worker", str(self.spec_path), str(self.out_path)],
            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                _out, err = self.proc.communicate()
                raise RuntimeError(f"flood worker did not start:\n{err.decode()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError("flood worker did not stop within 60 s") from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"flood worker failed:\n{err.decode()[-3000:]}")
        result: dict[str, Any] = json.loads(self.out_path.read_text())
        return result


def _delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after.get(name, 0.0) - value for name, value in before.items()}


def _writer_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Audit jobs and commits of the group-commit writer between two /metrics readings."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    commits = delta("sceau_audit_batch_jobs_count")
    return {"jobs": delta("sceau_audit_batch_jobs_sum"), "commits": commits,
            "commit_ms": (delta("sceau_audit_write_seconds_sum") / commits * 1000
                          if commits else float("nan"))}


def run_flood(target: Any, settings: Any, workdir: Path) -> dict[str, Any]:
    """All phases against a started :class:`bench.targets.SceauTarget`; the ``flood`` result.

    ``settings`` is a :class:`bench.run.Settings` (seconds, warm-up, deadline, skipped).
    """
    from bench.run import run_generator, say
    from bench.targets import WORKLOADS

    workdir.mkdir(parents=True, exist_ok=True)
    valid_spec = target.spec(WORKLOADS["encrypt"])
    valid_spec.update(workload="encrypt", concurrency=VALID_CONCURRENCY)
    tokens = forged_tokens(target.spec_base["sceau"], now=int(time.time()))
    tokens["garbage"] = garbage_tokens()
    tokens.update(random_key_jwes(target.spec_base["sceau"], now=int(time.time())))
    base = {"host": valid_spec["host"], "port": valid_spec["port"],
            "cafile": valid_spec["cafile"], "path": "/v1/encrypt",
            "server_pid": valid_spec["server_pid"], "connections": FLOOD_CONNECTIONS,
            "tokens": tokens, "max_seconds": settings.seconds * 6 + 120}
    phases: dict[str, Any] = {}
    notes: list[str] = []
    mix = [cls for cls in MIX if cls in tokens or cls == "oversized"]
    jwe_mix = [cls for cls in JWE_MIX if cls in tokens]
    notes += [f"class {cls} left out: the server publishes no key for it"
              for cls in JWE_MIX if cls not in tokens]

    def too_late(what: str) -> bool:
        if time.monotonic() > settings.deadline:
            settings.skipped.append(f"flood {what}")
            notes.append(f"{what} skipped to stay within the time budget")
            return True
        return False

    def valid(label: str, flood_mix: Sequence[str] | None = None,
              connections: int = FLOOD_CONNECTIONS) -> dict[str, Any]:
        before, jwe_before = target.writer_stats(), target.jwe_stats()
        worker = (FloodProcess({**base, "mix": list(flood_mix), "connections": connections},
                               workdir, label)
                  if flood_mix else None)
        try:
            result = run_generator({**valid_spec, "label": label}, workdir, settings)
        finally:
            flood_result = worker.stop() if worker is not None else None
        phase: dict[str, Any] = {"valid": result,
                                 "writer": _writer_delta(before, target.writer_stats()),
                                 "jwe": _delta(jwe_before, target.jwe_stats())}
        line = (f"flood {label:>13}: valid {result['rps']:6.0f} req/s p50 "
                f"{result['lat_ms']['p50']:7.2f} ms p99 {result['lat_ms']['p99']:7.2f} ms")
        if flood_result is not None:
            phase["flood"] = flood_result
            line += f"; flood {flood_result['refused_per_s']:6.0f} refused/s"
        say(line)
        return phase

    def flood_only(label: str, mix: Sequence[str], seconds: float) -> dict[str, Any]:
        before, jwe_before = target.writer_stats(), target.jwe_stats()
        worker = FloodProcess({**base, "mix": list(mix)}, workdir, label)
        time.sleep(seconds)
        result = worker.stop()
        say(f"flood {label:>15}: {result['refused_per_s']:6.0f} refused/s "
            f"{result['server_cpu_ms_per_refusal']:.3f} ms server CPU each "
            f"statuses {result['statuses']}")
        return {"flood": result, "writer": _writer_delta(before, target.writer_stats()),
                "jwe": _delta(jwe_before, target.jwe_stats())}

    if not too_late("valid callers alone"):
        phases["alone_before"] = valid("alone-before")
    if not too_late("valid callers under the flood"):
        phases["flooded"] = valid("flooded", mix)
    if not too_late("valid callers alone, after"):
        phases["alone_after"] = valid("alone-after")
    if not too_late("flood alone"):
        phases["flood_only"] = flood_only("only", mix, settings.seconds)
    # Diagnostic: would the structural guard alone keep valid callers within the limit?
    if not too_late("valid callers under a garbage-only flood"):
        phases["flooded_garbage"] = valid("garbage-flooded", ("garbage",))
    # SECURITY-CASES 49: well-formed JWEs with random keys, on many connections.
    if jwe_mix and not too_late("valid callers under a JWE-only flood"):
        phases["flooded_jwe"] = valid("jwe-flooded", jwe_mix, JWE_FLOOD_CONNECTIONS)
    class_seconds = max(1.0, settings.seconds / 2)
    phases["classes"] = {}
    for cls in (*mix, *DIAGNOSTIC):
        if not too_late(f"class {cls} alone"):
            phases["classes"][cls] = flood_only(cls, [cls], class_seconds)
    return {
        "server": f"{target.label or 'sceau'} ({target.store}, {target.keystore} keystore)",
        "valid_workload": "encrypt 1 KiB",
        "valid_concurrency": VALID_CONCURRENCY,
        "flood_connections": FLOOD_CONNECTIONS,
        "jwe_flood_connections": JWE_FLOOD_CONNECTIONS,
        "jwe_per_ip_per_s": os.environ.get("SCEAU_JWE_PER_IP_PER_S", "default"),
        "mix": mix,
        "seconds": settings.seconds,
        "class_seconds": class_seconds,
        "oversized_declared_bytes": OVERSIZED_BYTES,
        "es256_verify_us": es256_verify_us(),
        "phases": phases,
        "summary": summarize(phases),
        "notes": notes,
    }


def main(argv: Sequence[str]) -> int:
    """Standalone: one fresh Sceau server (SQLite, file keystore), every phase, a report."""
    if argv[1:2] == ["--worker"]:
        return worker_main(argv[2:])
    from bench import report
    from bench.run import Settings, cpu_model, ensure_tools, say
    from bench.targets import SceauTarget

    if "--quick" in argv:
        os.environ["BENCH_QUICK"] = "1"
    settings = Settings()
    ensure_tools([])
    workdir = Path(tempfile.mkdtemp(prefix="sceau-flood-"))
    target = SceauTarget(workdir / "sceau-sqlite-flood", "sqlite", "file", pool=32,
                         label="sceau-sqlite")
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        say("starting sceau-sqlite for the flood benchmark")
        target.start()
        result = run_flood(target, settings, workdir / "runs")
    finally:
        target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {"started": started, "cpus": os.cpu_count(), "cpu_model": cpu_model(),
            "quick": settings.quick}
    doc = {"meta": meta, "flood": result}
    text = report.flood_section(result, meta)
    settings.out.mkdir(parents=True, exist_ok=True)
    stamp = started.replace(":", "").replace("-", "")
    (settings.out / f"flood-{stamp}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (settings.out / f"flood-{stamp}.md").write_text(text)
    print(text)
    say(f"results: {settings.out / f'flood-{stamp}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
