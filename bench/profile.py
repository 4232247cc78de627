"""``python -m bench.run --profile [WORKLOAD] [CONCURRENCY]``: where a Sceau request's CPU goes.

Starts a Sceau server (SQLite, file keystore) pinned to CPU 0, runs the load generator
(CPU 1) and samples the server with py-spy for the whole generator run (idle threads are
not sampled, so the pre-signing pause adds nothing). Writes, under ``bench/results/``:

- ``profile-<workload>-c<N>.txt``: collapsed stacks (py-spy ``raw`` format);
- ``profile-<workload>-c<N>.md``: the share of samples per request phase (the buckets
  below, inclusive) and the top functions by self and inclusive samples.

``BENCH_PROFILE_GIL=1`` samples only the thread holding the GIL (a closer proxy for
Python CPU; time in C code that releases the GIL — TLS record encryption, fsync,
SQLite's pager — then disappears).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.targets import WORKLOADS, SceauTarget

# Request phases, matched against frames "function (path:line)"; the first match from the
# top of the stack's *innermost* end decides nothing — a phase is counted when any frame of
# the stack matches (inclusive), so phases can nest (the writer contains SQL statements).
PHASES: tuple[tuple[str, str], ...] = (
    ("TLS (ssl read/write, handshakes)",
     r"\(ssl\.py|sslproto\.py|_SSLProtocolTransport|do_handshake"),
    ("HTTP parsing / uvicorn protocol", r"uvicorn/protocols/http|h11/|httptools"),
    ("ASGI stack (starlette/fastapi routing, middleware)", r"starlette/|fastapi/"),
    ("request JOSE verify (RequestVerifier.verify)", r"sceau/jose/request\.py"),
    ("  of which signature verification", r"\bverify \(sceau/jose/appkeys\.py"),
    ("writer batch (Writer._run_batch, thread)", r"_run_batch \(sceau/store/writer\.py"),
    ("  job functions (handlers in the transaction)", r"_run_job \(sceau/store/writer\.py"),
    ("  SQL statements (on the driver or SQLAlchemy execute)",
     r"sceau/store/driver\.py|sqlalchemy/engine/base\.py"),
    ("  COMMIT", r"\b_commit_impl\b|\bcommit \(sqlalchemy"),
    ("  audit record build + signing", r"build_record \(sceau/core/audit\.py"),
    ("  of which keystore sign (audit)", r"_sign_audit \(sceau/store/writer\.py"),
    ("  key derivation / seal (keystore)", r"sceau/keystore/file\.py"),
    ("response JWS (sign_service_jws)", r"sign_service_jws \(sceau/service/"),
    ("response JWE (lowlevel_jwe_encrypt)", r"\blowlevel_jwe_encrypt \(sceau/jose/response\.py"),
    ("logging", r"\(logging/|sceau/service/observability\.py"),
    ("prometheus metrics", r"prometheus_client/"),
    ("pydantic params", r"pydantic"),
)

# Exclusive attribution: each sample goes to the component of its innermost frame that
# matches one of these (checked in this order for that frame), so the shares add up to 100 %.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("SQLite C calls (execute/commit, incl. fsync)",
     r"^DefaultDialect\.do_(execute|commit|rollback)"),
    ("SQLAlchemy Core (compile, cache keys, params, results)", r"sqlalchemy/"),
    ("keystore (HMAC derivation, seal, signatures)", r"sceau/keystore/"),
    ("audit record (canonical JSON, hash chain)", r"sceau/core/audit\.py|sceau/core/canonical\.py"),
    ("request verification (guard, parse, signature, claims)",
     r"sceau/jose/(request|guard|appkeys)\.py"),
    ("response JWE (jose/response.py, cryptography)",
     r"jwcrypto/|(lowlevel_jwe_encrypt|_ephemeral_agreement|concat_kdf) \(sceau/jose/response\.py"),
    ("SQL statements on the driver (store/driver.py)", r"sceau/store/driver\.py"),
    ("JSON encode/decode (stdlib)", r"\(json/"),
    ("base64", r"\(base64\.py|sceau/core/b64\.py"),
    ("AES-GCM / envelope", r"sceau/core/envelope\.py|cryptography/"),
    ("logging", r"\(logging/|sceau/service/observability\.py"),
    ("prometheus_client", r"prometheus_client/"),
    ("pydantic params", r"pydantic|sceau/service/params\.py"),
    ("key records / policy (sceau core)", r"sceau/core/"),
    ("handlers and key ops (sceau service)", r"sceau/service/|sceau/store/repo\.py"),
    ("writer bookkeeping (batching, futures, savepoints)",
     r"sceau/store/writer\.py|concurrent/futures|queue\.py"),
    ("TLS (ssl module)", r"\(ssl\.py|sslproto\.py"),
    ("HTTP server (uvicorn, httptools)", r"uvicorn/|httptools|h11/"),
    ("ASGI framework (starlette, fastapi)", r"starlette/|fastapi/"),
    ("event loop (asyncio/uvloop)", r"asyncio/|uvloop"),
    ("threading / other", r"."),
)

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """(frames outermost first, samples) per line of py-spy's raw output."""
    out: list[tuple[list[str], int]] = []
    for line in lines:
        m = _LINE.match(line.strip())
        if m:
            out.append((m.group("stack").split(";"), int(m.group("count"))))
    return out


def components(stacks: list[tuple[list[str], int]]) -> dict[str, int]:
    """Samples per component (exclusive; see :data:`COMPONENTS`), in table order."""
    compiled = [(name, re.compile(pattern)) for name, pattern in COMPONENTS]
    out = {name: 0 for name, _ in COMPONENTS}
    for frames, n in stacks:
        for frame in reversed(frames):
            hit = next((name for name, rx in compiled if rx.search(frame)), None)
            if hit is not None and hit != COMPONENTS[-1][0]:
                out[hit] += n
                break
        else:
            out[COMPONENTS[-1][0]] += n
    return out


def summarize(stacks: list[tuple[list[str], int]], top: int = 25,
              cpu_us_per_request: float | None = None) -> str:
    """Markdown: components (exclusive), phases (inclusive), top functions."""
    total = sum(n for _, n in stacks) or 1
    lines = [f"Samples: {total}", ""]
    if cpu_us_per_request:
        lines += [f"Server CPU per request: {cpu_us_per_request:.0f} µs "
                  "(µs column = share × that).", ""]
    lines += ["| component (exclusive) | share | µs/request |", "|---|---|---|"]
    for name, n in sorted(components(stacks).items(), key=lambda kv: -kv[1]):
        us = f"{n / total * cpu_us_per_request:.0f}" if cpu_us_per_request else "–"
        lines.append(f"| {name} | {_pct(n, total)} | {us} |")
    lines += ["", "| phase (inclusive, phases nest) | share of samples |", "|---|---|"]
    for name, pattern in PHASES:
        rx = re.compile(pattern)
        hit = sum(n for frames, n in stacks if any(rx.search(f) for f in frames))
        lines.append(f"| {name} | {hit / total * 100:.1f} % |")
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        if not frames:
            continue
        threads[frames[0]] += n
        self_counts[_short(frames[-1])] += n
        for f in set(_short(f) for f in frames[1:]):
            incl_counts[f] += n
    lines += ["", "| thread | share |", "|---|---|"]
    for name, n in threads.most_common(8):
        lines.append(f"| {name} | {n / total * 100:.1f} % |")
    lines += ["", f"Top {top} functions by self samples:", "",
              "| function | self | inclusive |", "|---|---|---|"]
    for name, n in self_counts.most_common(top):
        lines.append(f"| `{name}` | {_pct(n, total)} | {_pct(incl_counts[name], total)} |")
    lines += ["", f"Top {top} functions by inclusive samples:", "",
              "| function | inclusive | self |", "|---|---|---|"]
    for name, n in incl_counts.most_common(top):
        lines.append(f"| `{name}` | {_pct(n, total)} | {_pct(self_counts[name], total)} |")
    return "\n".join(lines) + "\n"


def _pct(n: int, total: int) -> str:
    return f"{n / total * 100:.1f} %"


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``; keeps package hints short."""
    m = re.match(r"^(?P<fn>.*?) \((?P<path>[^:()]*)(?::\d+)?\)$", frame)
    if not m:
        return frame
    path = m.group("path")
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('fn')} ({path})"


def profile_main(argv: Sequence[str]) -> int:
    """Profile one workload (default ``encrypt`` at c=32); paths of what it wrote."""
    from bench.run import Settings, run_generator, say

    workload = WORKLOADS[argv[0] if argv else "encrypt"]
    concurrency = int(argv[1]) if len(argv) > 1 else 32
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        raise SystemExit("py-spy not installed: bash scripts/bench-setup.sh")
    settings = Settings()
    workdir = Path(tempfile.mkdtemp(prefix="sceau-profile-"))
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"profile-{workload.name}-c{concurrency}"
    raw = out / f"{stem}.txt"
    target = SceauTarget(workdir / "sceau", "sqlite", pool=settings.pool)
    say(f"profile: starting Sceau for {workload.name} at c={concurrency}")
    target.start()
    try:
        assert target.proc is not None
        cmd = ["taskset", "-c", "1", pyspy, "record", "--pid", str(target.proc.pid),
               "--rate", os.environ.get("BENCH_PROFILE_RATE", "250"), "--format", "raw",
               "--output", str(raw), "--nonblocking"]
        if os.environ.get("BENCH_PROFILE_GIL") == "1":
            cmd.append("--gil")
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        spec = target.spec(workload)
        spec.update(label="profile", workload=workload.name, concurrency=concurrency)
        result = run_generator(spec, workdir, settings)
        spy.send_signal(signal.SIGINT)
        _out, err = spy.communicate(timeout=60)
        if not raw.exists():
            raise SystemExit(f"py-spy wrote nothing: {err.decode()[-2000:]}")
    finally:
        target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    stacks = parse_collapsed(raw.read_text().splitlines())
    header = (f"# Profile: Sceau (SQLite, file keystore), {workload.name} at c={concurrency}\n\n"
              f"{result['rps']:.0f} req/s, server CPU {result['server_cpu_ms_per_req']:.3f} "
              f"ms/req, p50 {result['lat_ms']['p50']:.2f} ms, p99 "
              f"{result['lat_ms']['p99']:.2f} ms (while sampled).\n\n")
    summary = out / f"{stem}.md"
    summary.write_text(header + summarize(
        stacks, cpu_us_per_request=result["server_cpu_ms_per_req"] * 1000))
    print(summary.read_text())
    say(f"profile: {raw} and {summary}")
    return 0
