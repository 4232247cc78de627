"""The load generator: one process, one core, N keep-alive HTTPS connections, closed loop.

Run by ``bench.run`` as ``taskset -c 1 python -m bench.loadgen SPEC.json RESULT.json``.

Why a hand-written HTTP/1.1 client on asyncio streams (uvloop when present) rather than
httpx: at OpenBao's ~3,000 req/s on one core, httpx's per-request overhead (~200 µs) would
make the generator the bottleneck; a request here is one ``write`` of pre-built bytes and
one ``readuntil`` + ``readexactly``. The generator reports its own CPU use so a reader can
check it was not the limit.

Phases of one run:
1. warm-up (``warmup_s``): requests signed on the fly; the first response is fully verified
   (signature, binding to the request, JWE) so the timed phase measures real successes,
   and the observed rate sizes the next phase;
2. pre-signing: every request of the timed phase is signed now (distinct ``jti``), so the
   client's JOSE work is outside the measurement;
3. fresh connections (TLS handshakes outside the measurement), then the timed phase:
   ``concurrency`` workers, each sending its next request when the previous one is
   answered, until ``seconds`` have passed or the pre-signed requests are used up.
Server CPU (utime+stime of the server process, and of the PostgreSQL backends serving
its database) is read from /proc right before and after the timed phase.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procstat import (
    cpu_line,
    cpu_seconds,
    cpu_times,
    descendants,
    loadavg,
    status_kib,
    total_cpu_seconds,
)

# Response bodies of a 100-item batch are ~200 KB; the stream buffer must hold a header
# block and a chunk-size line comfortably, not the body (readexactly has no limit).
STREAM_LIMIT = 1 << 20
SIZE_FACTOR = 1.5  # pre-sign this many times what the warm-up rate predicts
SERVER_CPU = 0  # bench.run pins the servers there


class HttpError(Exception):
    """The connection broke or the server answered something this client cannot parse."""


class Connection:
    """One keep-alive HTTP/1.1 connection over TLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext) -> Connection:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host, limit=STREAM_LIMIT
        )
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one complete request; return (status, body)."""
        self.writer.write(raw)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise HttpError("connection closed before a response") from exc
        return await read_body(self.reader, head)

    def close(self) -> None:
        self.writer.close()


async def read_body(reader: asyncio.StreamReader, head: bytes) -> tuple[int, bytes]:
    """Parse a response head and read its body (Content-Length or chunked)."""
    status, length, chunked = parse_head(head)
    if length is not None:
        return status, await reader.readexactly(length)
    if not chunked:
        raise HttpError("response without Content-Length or chunked encoding")
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            # Trailer section: header lines up to an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return status, b"".join(parts)
        chunk = await reader.readexactly(size + 2)
        parts.append(chunk[:-2])


def parse_head(head: bytes) -> tuple[int, int | None, bool]:
    """(status, content-length or None, chunked) of an HTTP/1.1 response head."""
    if not head.startswith(b"HTTP/1.1 ") or len(head) < 12:
        raise HttpError(f"not an HTTP/1.1 response: {head[:40]!r}")
    status = int(head[9:12])
    length: int | None = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return status, length, chunked


def build_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The complete bytes of one POST."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1]) of an ascending sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


# --- request sources ------------------------------------------------------------------------


@dataclass
class SceauRequests:
    """Signs Sceau requests: ``params_pool[i % len]`` with a fresh ``jti`` each."""

    spec: dict[str, Any]
    _identity: Any = field(init=False)
    _i: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        from sceau.jose.client import ClientIdentity

        ident = self.spec["sceau"]["identity"]
        self._identity = ClientIdentity(
            app_id=ident["app_id"], kid=ident["kid"], alg=ident["alg"],
            private_jwk=ident["private_jwk"], enc_private_jwk=ident["enc_private_jwk"],
        )

    def sign(self) -> tuple[bytes, str]:
        """One request's bytes and its jti."""
        from sceau.core.b64 import b64u_encode
        from sceau.jose.client import sign_request

        s = self.spec["sceau"]
        pool = s["params_pool"]
        params = pool[self._i % len(pool)]
        self._i += 1
        jti = b64u_encode(secrets.token_bytes(16))
        token = sign_request(
            self._identity, sub=s["user"], aud=s["service_id"], op=s["op"], params=params,
            now=int(time.time()), jti=jti, lifetime=300,
        )
        if s.get("wrap_to"):  # the JWE workloads: nested in a JWE to that service key
            from sceau.jose.client import wrap_for_service

            token = wrap_for_service(token, s["wrap_to"])
        raw = build_request(self.spec["host"], self.spec["port"], self.spec["path"],
                            self.spec["headers"], token.encode("ascii"))
        return raw, jti

    def check(self, jti: str, status: int, body: bytes) -> None:
        """Verify one response as the SDK would; raise when it is not a success."""
        from sceau.jose.client import open_response

        if status != 200:
            raise RuntimeError(f"sceau answered {status}: {body[:300]!r}")
        s = self.spec["sceau"]
        pinned = {k["kid"]: k for k in s["service_jwks"]["keys"] if k.get("use") == "sig"}
        open_response(
            body.decode("ascii"), service_keys=pinned,
            enc_private_jwk=self._identity.enc_private_jwk,
            expected_aud=self._identity.app_id, expected_iss=s["service_id"],
            expected_req=jti, expected_op=s["op"], require_jwe=s["require_jwe"],
        )


@dataclass
class PlainRequests:
    """OpenBao requests: pre-built bodies, cycled (Transit has no request ids to vary)."""

    spec: dict[str, Any]
    _raws: list[bytes] = field(init=False)
    _i: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._raws = [
            build_request(self.spec["host"], self.spec["port"], self.spec["path"],
                          self.spec["headers"], body.encode())
            for body in self.spec["bodies"]
        ]

    def sign(self) -> tuple[bytes, str]:
        raw = self._raws[self._i % len(self._raws)]
        self._i += 1
        return raw, ""

    def check(self, _jti: str, status: int, body: bytes) -> None:
        if status != 200:
            raise RuntimeError(f"openbao answered {status}: {body[:300]!r}")
        doc = json.loads(body)
        if doc.get("errors") or "data" not in doc:
            raise RuntimeError(f"openbao answered without data: {body[:300]!r}")


# --- phases -------------------------------------------------------------------------------


async def open_all(spec: dict[str, Any], context: ssl.SSLContext, n: int) -> list[Connection]:
    return list(await asyncio.gather(
        *(Connection.open(spec["host"], spec["port"], context) for _ in range(n))
    ))


async def warm_up(spec: dict[str, Any], source: SceauRequests | PlainRequests,
                  context: ssl.SSLContext) -> tuple[float, int]:
    """Run on-the-fly requests for ``warmup_s``; verify the first; return (rate, errors)."""
    conns = await open_all(spec, context, spec["concurrency"])
    raw, jti = source.sign()
    status, body = await conns[0].request(raw)
    source.check(jti, status, body)
    done = 0
    errors = 0
    started = time.perf_counter()
    deadline = started + spec["warmup_s"]
    busy = 0.0  # time spent waiting on the server, summed over workers

    async def worker(conn: Connection) -> None:
        nonlocal done, errors, busy
        while time.perf_counter() < deadline:
            raw, _jti = source.sign()
            t0 = time.perf_counter()
            status, _body = await conn.request(raw)
            busy += time.perf_counter() - t0
            done += 1
            errors += status != 200

    await asyncio.gather(*(worker(c) for c in conns))
    for conn in conns:
        conn.close()
    # Rate the server sustained, not counting the time workers spent signing (which the
    # timed phase will not do): completed requests over the mean time a worker waited.
    waited = busy / spec["concurrency"]
    return (done / waited if waited > 0 else 0.0), errors


async def timed(spec: dict[str, Any], raws: Callable[[int], bytes | None],
                context: ssl.SSLContext, pids: list[int], db_pids: list[int]) -> dict[str, Any]:
    """The measured window: ``seconds`` of closed-loop load (or until the requests run out).

    Server CPU and the completion count are snapshotted when the window closes; requests
    still in flight then are awaited (so the server is idle before the next run) but not
    counted: with 32 slow batches in flight the tail would otherwise stretch the window.
    """
    conns = await open_all(spec, context, spec["concurrency"])
    latencies: list[float] = []
    errors = 0
    error_sample = ""
    next_index = 0
    exhausted = False
    load0 = loadavg()
    cpu0_0 = cpu_line(SERVER_CPU)
    times0 = cpu_times(pids[0])
    cpu0 = total_cpu_seconds(pids)
    db0 = total_cpu_seconds(db_pids)
    gen0 = time.process_time()
    started = time.perf_counter()
    deadline = started + spec["seconds"]
    end: dict[str, Any] = {}

    def close_window() -> None:
        if end:
            return
        end.update(
            t=time.perf_counter(), gen=time.process_time(), cpu=total_cpu_seconds(pids),
            times=cpu_times(pids[0]), cpu0=cpu_line(SERVER_CPU),
            db=total_cpu_seconds(db_pids),
        )

    async def closer() -> None:
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        close_window()

    async def worker(conn: Connection) -> None:
        nonlocal errors, error_sample, next_index, exhausted
        while True:
            raw = raws(next_index)
            if raw is None:
                exhausted = True
                return
            next_index += 1
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            status, body = await conn.request(raw)
            if end:
                continue  # answered after the window closed: drained, not counted
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors += 1
                if not error_sample:
                    error_sample = f"{status}: {body[:300]!r}"

    timer = asyncio.create_task(closer())
    await asyncio.gather(*(worker(c) for c in conns))
    close_window()  # the requests ran out before the deadline
    timer.cancel()
    drain_s = time.perf_counter() - end["t"]
    elapsed = end["t"] - started
    gen_cpu = end["gen"] - gen0
    server_cpu = end["cpu"] - cpu0
    times1 = end["times"]
    others = (end["cpu0"][0] - cpu0_0[0]) - server_cpu
    db_cpu = end["db"] - db0
    cpu0_1 = end["cpu0"]
    for conn in conns:
        conn.close()
    latencies.sort()
    n = len(latencies)
    ok = n - errors
    items = spec["items_per_request"]
    return {
        "requests": n,
        "errors": errors,
        "error_sample": error_sample,
        "duration_s": round(elapsed, 3),
        "exhausted_presigned": exhausted,
        "drain_s": round(drain_s, 3),
        "rps": ok / elapsed if elapsed else 0.0,
        "items_per_s": ok * items / elapsed if elapsed else 0.0,
        "lat_ms": {
            "p50": percentile(latencies, 0.50) * 1000,
            "p90": percentile(latencies, 0.90) * 1000,
            "p99": percentile(latencies, 0.99) * 1000,
            "max": (latencies[-1] * 1000) if latencies else float("nan"),
            "mean": (sum(latencies) / n * 1000) if n else float("nan"),
        },
        "server_cpu_s": server_cpu,
        "server_user_s": times1[0] - times0[0],
        "server_sys_s": times1[1] - times0[1],
        # Fraction of one core the server used; far below 1 at c=32 means it waited (I/O,
        # locks) or another process took its core.
        "server_cpu_frac": server_cpu / elapsed if elapsed else 0.0,
        # CPU 0 time used by other processes (and stolen by the hypervisor) while the
        # server ran there: the run's numbers are only clean when both are near 0.
        "cpu0_others_frac": max(0.0, others) / elapsed if elapsed else 0.0,
        "cpu0_steal_frac": (cpu0_1[2] - cpu0_0[2]) / elapsed if elapsed else 0.0,
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
        "server_cpu_ms_per_req": server_cpu / ok * 1000 if ok else float("nan"),
        "req_per_server_cpu_s": ok / server_cpu if server_cpu else float("nan"),
        "db_cpu_s": db_cpu if db_pids else None,
        "generator_cpu_frac": gen_cpu / elapsed if elapsed else 0.0,
    }


def db_backend_pids(db: dict[str, str] | None) -> list[int]:
    """PIDs of the PostgreSQL backends connected to the benchmark's database."""
    if not db:
        return []
    import psycopg

    with psycopg.connect(db["admin_url"], autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (db["datname"],),
        ).fetchall()
    return [int(r[0]) for r in rows]


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up, pre-sign, run the timed phase; the result dict (see module doc)."""
    context = ssl.create_default_context(cafile=spec["cafile"])
    context.set_alpn_protocols(["http/1.1"])
    source: SceauRequests | PlainRequests = (
        SceauRequests(spec) if spec["system"] == "sceau" else PlainRequests(spec)
    )
    rate, warm_errors = await warm_up(spec, source, context)
    presign_started = time.perf_counter()
    raws: Callable[[int], bytes | None]
    count = 0
    if isinstance(source, SceauRequests):
        wanted = int(rate * spec["seconds"] * SIZE_FACTOR) + 4 * spec["concurrency"]
        count = max(8 * spec["concurrency"], min(wanted, spec["max_requests"]))
        signed = [source.sign()[0] for _ in range(count)]

        def raws(i: int) -> bytes | None:
            return signed[i] if i < len(signed) else None
    else:
        def raws(i: int) -> bytes | None:
            return source.sign()[0]
    presign_s = time.perf_counter() - presign_started
    # The server and its worker processes (``--workers N``), found when the window opens.
    pids = [spec["server_pid"], *descendants(spec["server_pid"])]
    db_pids = db_backend_pids(spec.get("db"))
    result = await timed(spec, raws, context, pids, db_pids)
    result.update(
        warmup_rate=rate,
        warmup_errors=warm_errors,
        presigned=count,
        presign_s=round(presign_s, 3),
        server_vmhwm_kib=status_kib(spec["server_pid"], "VmHWM"),
        server_vmrss_kib=status_kib(spec["server_pid"], "VmRSS"),
        db_backends=len(db_pids),
        server_cpu_total_s=cpu_seconds(spec["server_pid"]),
    )
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    result = asyncio.run(run(spec))
    Path(argv[2]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
