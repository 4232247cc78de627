"""The benchmark's pure parts: HTTP response parsing, percentiles, openssl output, ratios,
profile summaries and /proc readers. (The benchmark itself runs with ``make bench``.)"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# bench/ is a top-level package beside src/, run as `python -m bench.run` from the
# repository root; pytest's pythonpath only holds tests/.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import loadgen, procstat, profile, report  # noqa: E402


def _read(raw: bytes) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        head = await reader.readuntil(b"\r\n\r\n")
        return await loadgen.read_body(reader, head)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("raw", "status", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, b"hello"),
        (b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\nX: y\r\n\r\n{}", 401, b"{}"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n", 200, b"abcdefg"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"2\r\nhi\r\n0\r\nTrailer: x\r\n\r\n", 200, b"hi"),
    ],
)
def test_read_body(raw: bytes, status: int, body: bytes) -> None:
    assert _read(raw) == (status, body)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n",  # neither length nor chunked
    ],
)
def test_read_body_refuses(raw: bytes) -> None:
    with pytest.raises(loadgen.HttpError):
        _read(raw)


def test_build_request_has_exact_length() -> None:
    raw = loadgen.build_request("127.0.0.1", 8443, "/v1/encrypt",
                                {"Content-Type": "application/jose"}, b"a.b.c")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b"a.b.c"
    assert b"\r\nContent-Length: 5" in head
    assert head.startswith(b"POST /v1/encrypt HTTP/1.1\r\nHost: 127.0.0.1:8443")


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 50.0), (0.9, 90.0), (0.99, 99.0), (1.0, 100.0), (0.0, 1.0)],
)
def test_percentile_nearest_rank(q: float, expected: float) -> None:
    values = [float(i) for i in range(1, 101)]
    assert loadgen.percentile(values, q) == expected


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(loadgen.percentile([], 0.5))


OPENSSL = """\
version: 3.0.19
The 'numbers' are in 1000s of bytes per second processed.
type             16 bytes     64 bytes    256 bytes   1024 bytes   8192 bytes  16384 bytes
AES-256-GCM      23249.60k    92020.39k   355072.91k   967273.93k  2848194.56k  3165295.18k
"""


def test_parse_openssl_speed() -> None:
    got = report.parse_openssl_speed(OPENSSL)
    assert got["16384"] == pytest.approx(3_165_295_180.0)
    assert got["16"] == pytest.approx(23_249_600.0)
    assert len(got) == 6


@pytest.mark.parametrize(
    "text",
    ["no table here", OPENSSL.replace("3165295.18k", ""), OPENSSL.replace("3165295.18k", "1.0M")],
)
def test_parse_openssl_speed_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        report.parse_openssl_speed(text)


def _run(label: str, workload: str, c: int, items_per_s: float, per_cpu: float, p50: float,
         p99: float) -> dict[str, Any]:
    return {
        "system": "openbao" if label == "openbao" else "sceau", "label": label,
        "workload": workload, "concurrency": c,
        "result": {"items_per_s": items_per_s, "rps": items_per_s, "requests": 10,
                   "errors": 0, "req_per_server_cpu_s": per_cpu,
                   "server_cpu_ms_per_req": 1000 / per_cpu,
                   "lat_ms": {"p50": p50, "p90": p99, "p99": p99},
                   "generator_cpu_frac": 0.1, "server_cpu_frac": 1.0,
                   "cpu0_others_frac": 0.0, "server_vmhwm_kib": 2048},
    }


def test_ratios_and_verdicts() -> None:
    runs = [
        _run("openbao", "encrypt", 1, 2000, 2000, 0.4, 1.0),
        _run("openbao", "encrypt", 32, 3000, 3000, 10, 20),
        _run("sceau-sqlite", "encrypt", 1, 1000, 1500, 0.8, 2.0),
        _run("sceau-sqlite", "encrypt", 32, 3300, 3300, 9, 50),
        _run("openbao", "batch-encrypt", 8, 14500, 145, 200, 400),
        _run("sceau-sqlite", "batch-encrypt", 8, 10000, 100, 300, 600),
    ]
    rows = {r["workload"]: r for r in report.ratios(runs)}
    enc = rows["encrypt"]
    assert enc["rps_c1"] == pytest.approx(0.5)
    assert enc["per_cpu_high"] == pytest.approx(1.1)
    assert enc["p50_c1"] == pytest.approx(2.0)
    assert enc["p99_high"] == pytest.approx(2.5)
    assert enc["high_c"] == 32
    assert enc["verdict"] == "✔ ≥0.8× per CPU, ✔ p50≤1.0ms"
    batch = rows["batch-encrypt"]
    assert batch["rps_high"] == pytest.approx(10000 / 14500)
    assert batch["high_c"] == 8
    assert batch["verdict"] == "✔ ≥0.5× per CPU"  # 10000 / 14500 items per CPU-second
    md = report.markdown({"meta": {"started": "t", "cpus": 2, "cpu_model": "x",
                                   "python": "p", "seconds": 1, "openbao": "b"},
                          "runs": runs, "ratios": report.ratios(runs), "reference": {}})
    assert "| sceau-sqlite | encrypt | 32 | 0.50× | 1.10× | 1.10× |" in md
    assert "| sceau-sqlite | encrypt | 1.10× | 0.75× | 0.80 vs 0.40 ms | ✔" in md


def test_verdicts_follow_issue_17_targets() -> None:
    """Data keys need 0.6× per CPU, encrypt 0.8×; the p50 limit is judged on SQLite only."""
    runs = [
        _run("openbao", "generate-data-key", 1, 2000, 2000, 0.4, 1.0),
        _run("openbao", "generate-data-key", 32, 3000, 3000, 10, 20),
        _run("sceau-sqlite", "generate-data-key", 1, 1000, 1000, 1.1, 2.0),
        _run("sceau-sqlite", "generate-data-key", 32, 1900, 1900, 9, 50),
        _run("sceau-postgres", "generate-data-key", 1, 900, 900, 3.0, 2.0),
        _run("sceau-postgres", "generate-data-key", 32, 1700, 1700, 9, 50),
        _run("openbao", "decrypt", 32, 3000, 3000, 10, 20),
        _run("sceau-sqlite", "decrypt", 32, 2300, 2300, 10, 20),
    ]
    rows = {(r["label"], r["workload"]): r["verdict"] for r in report.ratios(runs)}
    assert rows[("sceau-sqlite", "generate-data-key")] == "✔ ≥0.6× per CPU, ✔ p50≤1.2ms"
    assert rows[("sceau-postgres", "generate-data-key")] == "✘ ≥0.6× per CPU"
    assert rows[("sceau-sqlite", "decrypt")] == "✘ ≥0.8× per CPU"  # 2300 / 3000 = 0.77


def test_postgres_cpu_counts_its_backends() -> None:
    lite = _run("sceau-sqlite", "encrypt", 32, 1000, 1000, 1, 2)
    lite["result"].update(server_cpu_s=1.0, requests=1000)  # 1 ms per call
    pg = _run("sceau-postgres", "encrypt", 32, 1000, 1000, 1, 2)
    pg["result"].update(server_cpu_s=1.2, db_cpu_s=0.3, server_cpu_ms_per_req=1.2, requests=1000)
    [row] = report.store_rows([lite, pg])
    assert row["server_ratio"] == pytest.approx(1.2)
    assert row["ratio"] == pytest.approx(1.5)
    assert "| 1.20× | 1.50× ✘ |" in report.store_table([row])


def test_scaling_table_compares_with_one_worker() -> None:
    def run(workers: int, rps: float) -> dict[str, object]:
        return {"store": "sqlite", "workers": workers, "workload": "encrypt",
                "concurrency": 64, "result": {"rps": rps, "errors": 0,
                                              "lat_ms": {"p50": 1.0, "p99": 5.0},
                                              "server_cpu_ms_per_req": 0.8}}
    table = report.scaling_table([run(1, 1000), run(2, 1600)])
    assert "| sqlite | encrypt | 64 | 2 | 1,600 | 1.60× ✔ |" in table
    assert "| 1.40× ✘ |" in report.scaling_table([run(1, 1000), run(2, 1400)])


@pytest.mark.parametrize(
    ("wanted", "max_c", "high_only", "expected"),
    [([1, 32], None, False, [1, 32]), ([1, 32], 8, False, [1, 8]), ([1, 32], 8, True, [8]),
     ([4], 8, False, [4])],
)
def test_workload_concurrencies(wanted: list[int], max_c: int | None, high_only: bool,
                                expected: list[int]) -> None:
    from bench.targets import Workload

    assert Workload("w", 1, max_c, high_only).concurrencies(wanted) == expected


def test_contended_runs_are_named() -> None:
    run = _run("openbao", "encrypt", 32, 1, 1, 1, 1)
    run["result"]["cpu0_others_frac"] = 0.5
    assert report.contended([run]) == ["openbao encrypt c=32 (50 %)"]


RAW = """\
Thread._bootstrap (threading.py:1002);Writer._run_batch (sceau/store/writer.py:10);\
do_execute (sqlalchemy/engine/base.py:5) 30
Runner.run (asyncio/runners.py:1);sign_service_jws (sceau/service/app.py:3) 10
garbage line
"""


def test_profile_summary_counts_phases() -> None:
    stacks = profile.parse_collapsed(RAW.splitlines())
    assert [n for _, n in stacks] == [30, 10]
    text = profile.summarize(stacks)
    assert "Samples: 40" in text
    assert "| writer batch (Writer._run_batch, thread) | 75.0 % |" in text
    assert "| response JWS (sign_service_jws) | 25.0 % |" in text
    assert "| request JOSE verify (RequestVerifier.verify) | 0.0 % |" in text


def test_procstat_reads_this_process() -> None:
    before = procstat.cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))
    assert procstat.cpu_seconds(os.getpid()) >= before > 0.0
    hwm = procstat.status_kib(os.getpid(), "VmHWM")
    assert hwm is not None and hwm > 1000
    assert procstat.cpu_seconds(2**22 + 7) == 0.0  # beyond pid_max: gone
    busy, idle, _steal = procstat.cpu_line(0)
    assert busy > 0 and idle >= 0


FILE_OUTPUT = """\
size             1024 MiB
stream only          1650 MB/s  (1.00 s)  (encryption, no file I/O)
file protect      812 MB/s  (1.32 s)  (read + encrypt + write + fsync + rename)
file open         790 MB/s  (1.36 s)  (read + decrypt + write + fsync + rename)
peak RSS             40.5 MiB
"""


def test_parse_file_throughput() -> None:
    assert report.parse_file_throughput(FILE_OUTPUT) == {
        "size MiB": 1024.0,
        "stream only MB/s": 1650.0,
        "file protect MB/s": 812.0,
        "file open MB/s": 790.0,
        "peak RSS MiB": 40.5,
    }


def test_descendants_finds_grandchildren() -> None:
    """The CPU of `sceau serve --workers N` is in its workers: the loader finds them all."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
         "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while not procstat.descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = procstat.descendants(parent.pid)
        assert len(found) == 1 and parent.pid not in found
        assert procstat.descendants(found[0]) == []
    finally:
        for pid in procstat.descendants(parent.pid):
            subprocess.run(["kill", str(pid)], check=False)
        parent.kill()
        parent.wait()
