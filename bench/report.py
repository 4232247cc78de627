"""Markdown tables and Sceau/OpenBao ratios from the benchmark's JSON results."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Issue 17's targets. Requests (items, for batches of the same size on both sides) per
# server CPU-second at the high concurrency, Sceau / OpenBao, at least:
PER_CPU_TARGETS = {"encrypt": 0.8, "decrypt": 0.8, "generate-data-key": 0.6,
                   "get-data-key": 0.6, "batch-encrypt": 0.5, "batch-decrypt": 0.5}
# p50 at c=1 on SQLite, at most (ms); every answer still waits for its durable record.
P50_C1_LIMITS_MS = {"encrypt": 1.0, "decrypt": 1.0, "generate-data-key": 1.2,
                    "get-data-key": 1.2}
# PostgreSQL CPU per call (server + its backends) / SQLite's, at most.
PG_CPU_RATIO_LIMIT = 1.3
# Requests/s with 2 workers / with 1, on this 2-core machine, at least.
WORKER_SCALING_GOAL = 1.5


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _pct(frac: float | None) -> str:
    return "–" if frac is None else f"{frac * 100:.0f} %"


def contended(runs: Sequence[Mapping[str, Any]], limit: float = 0.10) -> list[str]:
    """Runs during which other processes took more than ``limit`` of CPU 0."""
    return [
        f"{r['label']} {r['workload']} c={r['concurrency']}"
        f" ({r['result']['cpu0_others_frac'] * 100:.0f} %)"
        for r in runs
        if r["result"].get("cpu0_others_frac", 0.0) > limit
    ]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def find(runs: Iterable[Mapping[str, Any]], **match: Any) -> Mapping[str, Any] | None:
    """The first run whose fields equal ``match``."""
    for run in runs:
        if all(run.get(k) == v for k, v in match.items()):
            return run
    return None


def results_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """One row per (system, store, workload, concurrency)."""
    head = ("| system | workload | c | req/s | items/s | p50 ms | p90 ms | p99 ms | "
            "server CPU ms/req | req per server CPU-s | DB CPU ms/req | peak RSS MiB | "
            "server core use | CPU 0 others | generator CPU | errors |")
    lines = [head, "|" + "---|" * 16]
    for run in runs:
        r = run["result"]
        db = r.get("db_cpu_s")
        ok = r["requests"] - r["errors"]
        db_ms = db / ok * 1000 if db is not None and ok else None
        rss = r.get("server_vmhwm_kib")
        lines.append(
            f"| {run['label']} | {run['workload']} | {run['concurrency']} | {_num(r['rps'])} | "
            f"{_num(r['items_per_s'])} | {_num(r['lat_ms']['p50'], 2)} | "
            f"{_num(r['lat_ms']['p90'], 2)} | {_num(r['lat_ms']['p99'], 2)} | "
            f"{_num(r['server_cpu_ms_per_req'], 3)} | {_num(r['req_per_server_cpu_s'])} | "
            f"{_num(db_ms, 3)} | {_num(rss / 1024 if rss else None, 0)} | "
            f"{_pct(r.get('server_cpu_frac'))} | {_pct(r.get('cpu0_others_frac'))} | "
            f"{_pct(r['generator_cpu_frac'])} | {r['errors']} |"
        )
    return "\n".join(lines)


def ratios(runs: Sequence[Mapping[str, Any]], reference: str = "openbao") -> list[dict[str, Any]]:
    """Sceau/OpenBao ratios per Sceau configuration and workload.

    Throughput ratios are "higher is better" (Sceau ahead when > 1); latency ratios are
    "lower is better" (Sceau faster when < 1). Items/s is used for batches.
    """
    out: list[dict[str, Any]] = []
    labels = list(dict.fromkeys(r["label"] for r in runs if r["system"] == "sceau"))
    workloads = list(dict.fromkeys(r["workload"] for r in runs))
    for label in labels:
        for workload in workloads:
            row: dict[str, Any] = {"label": label, "workload": workload}
            levels = sorted({r["concurrency"] for r in runs if r["workload"] == workload})
            high = levels[-1]
            row["high_c"] = high
            for c in sorted({levels[0], high}):
                mine = find(runs, label=label, workload=workload, concurrency=c)
                theirs = find(runs, label=reference, workload=workload, concurrency=c)
                if mine is None or theirs is None:
                    continue
                m, t = mine["result"], theirs["result"]
                key = "c1" if c == 1 else "high"
                row[f"rps_{key}"] = _ratio(m["items_per_s"], t["items_per_s"])
                row[f"per_cpu_{key}"] = _ratio(m["req_per_server_cpu_s"],
                                               t["req_per_server_cpu_s"])
                if c == 1:
                    row["p50_c1"] = _ratio(m["lat_ms"]["p50"], t["lat_ms"]["p50"])
                    row["p50_c1_ms"] = m["lat_ms"]["p50"]
                else:
                    row["p99_high"] = _ratio(m["lat_ms"]["p99"], t["lat_ms"]["p99"])
            if len(row) > 3:
                row["verdict"] = verdict(row)
                out.append(row)
    return out


_MEDIAN_FIGURES = ("items_per_s", "rps", "req_per_server_cpu_s", "server_cpu_ms_per_req",
                   "cpu0_others_frac", "generator_cpu_frac")


def median_runs(raw: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One run per (label, workload, concurrency): the median of each figure over rounds,
    latencies included, with ``rounds`` and the spread of req per server CPU-s kept."""
    groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for run in raw:
        groups.setdefault((run["label"], run["workload"], run["concurrency"]), []).append(run)
    out: list[dict[str, Any]] = []
    for runs in groups.values():
        first = runs[0]
        results = [r["result"] for r in runs]
        merged: dict[str, Any] = dict(results[0])
        for name in _MEDIAN_FIGURES:
            merged[name] = statistics.median(r[name] for r in results)
        merged["lat_ms"] = {q: statistics.median(r["lat_ms"][q] for r in results)
                            for q in results[0]["lat_ms"]}
        per_cpu = [r["req_per_server_cpu_s"] for r in results]
        merged["rounds"] = len(results)
        merged["per_cpu_spread"] = (max(per_cpu) - min(per_cpu)) / statistics.median(per_cpu)
        out.append({**first, "result": merged})
    return out


def baseline_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """This checkout against ``BENCH_BASELINE``'s, per configuration, workload and
    concurrency: requests per server CPU-second, items/s and p50 (after / before)."""
    out: list[dict[str, Any]] = []
    for run in runs:
        label = str(run["label"])
        if run["system"] != "sceau" or label.endswith("-base"):
            continue
        before = find(runs, label=f"{label}-base", workload=run["workload"],
                      concurrency=run["concurrency"])
        if before is None:
            continue
        a, b = run["result"], before["result"]
        out.append({"label": label, "workload": run["workload"],
                    "concurrency": run["concurrency"],
                    "per_cpu": _ratio(a["req_per_server_cpu_s"], b["req_per_server_cpu_s"]),
                    "items_per_s": _ratio(a["items_per_s"], b["items_per_s"]),
                    "p50": _ratio(a["lat_ms"]["p50"], b["lat_ms"]["p50"])})
    return out


def baseline_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| Sceau config | workload | c | req per server CPU-s | items/s | "
             "p50 (lower better) |", "|" + "---|" * 6]
    for row in rows:
        lines.append(f"| {row['label']} | {row['workload']} | {row['concurrency']} | "
                     f"{_x(row['per_cpu'])} | {_x(row['items_per_s'])} | {_x(row['p50'])} |")
    return "\n".join(lines)


def verdict(row: Mapping[str, Any]) -> str:
    """Which of issue 17's targets this workload meets (✔) or misses (✘).

    The p50 limit is a SQLite target: it is judged on SQLite configurations only.
    """
    marks: list[str] = []
    workload = row["workload"]
    target = PER_CPU_TARGETS.get(workload)
    if target is not None and row.get("per_cpu_high") is not None:
        marks.append(("✔" if row["per_cpu_high"] >= target else "✘") + f" ≥{target}× per CPU")
    limit = P50_C1_LIMITS_MS.get(workload)
    if limit is not None and row.get("p50_c1_ms") is not None and "sqlite" in row["label"]:
        marks.append(("✔" if row["p50_c1_ms"] <= limit else "✘") + f" p50≤{limit}ms")
    return ", ".join(marks)


def issue_table(runs: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> str:
    """Issue 17's table: per-CPU ratios at both concurrencies and p50 at c=1, both systems."""
    lines = ["| Sceau config | workload | per server CPU-s, high c | per server CPU-s, c=1 | "
             "p50 c=1, Sceau vs OpenBao | targets |", "|" + "---|" * 6]
    for row in rows:
        mine = find(runs, label=row["label"], workload=row["workload"], concurrency=1)
        theirs = find(runs, label="openbao", workload=row["workload"], concurrency=1)
        p50 = (f"{mine['result']['lat_ms']['p50']:.2f} vs {theirs['result']['lat_ms']['p50']:.2f}"
               " ms" if mine is not None and theirs is not None else "–")
        lines.append(f"| {row['label']} | {row['workload']} | {_x(row.get('per_cpu_high'))} | "
                     f"{_x(row.get('per_cpu_c1'))} | {p50} | {row.get('verdict', '')} |")
    return "\n".join(lines)


def _cpu_per_call(run: Mapping[str, Any]) -> float | None:
    """Server CPU ms per successful call, plus the database backends' when measured."""
    r = run["result"]
    ok = r["requests"] - r["errors"]
    if not ok:
        return None
    return float(r["server_cpu_s"] + (r.get("db_cpu_s") or 0.0)) / float(ok) * 1000


def store_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """PostgreSQL / SQLite CPU per call at each workload's high concurrency."""
    out: list[dict[str, Any]] = []
    for run in runs:
        if run["label"] != "sceau-postgres":
            continue
        lite = find(runs, label="sceau-sqlite", workload=run["workload"],
                    concurrency=run["concurrency"])
        if lite is None or run["concurrency"] == 1:
            continue
        pg_total, lite_cpu = _cpu_per_call(run), _cpu_per_call(lite)
        out.append({"workload": run["workload"], "concurrency": run["concurrency"],
                    "sqlite_ms": lite_cpu,
                    "pg_server_ms": run["result"]["server_cpu_ms_per_req"],
                    "pg_total_ms": pg_total,
                    "server_ratio": _ratio(run["result"]["server_cpu_ms_per_req"], lite_cpu),
                    "ratio": _ratio(pg_total, lite_cpu)})
    return out


def store_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| workload | c | SQLite CPU ms/call | PG server CPU ms/call | PG server + backends "
             f"| PG/SQLite (server only) | PG/SQLite (with backends) ≤{PG_CPU_RATIO_LIMIT}× |",
             "|" + "---|" * 7]
    for row in rows:
        ratio = row["ratio"]
        mark = "" if ratio is None else (" ✔" if ratio <= PG_CPU_RATIO_LIMIT else " ✘")
        lines.append(f"| {row['workload']} | {row['concurrency']} | {_num(row['sqlite_ms'], 3)} | "
                     f"{_num(row['pg_server_ms'], 3)} | {_num(row['pg_total_ms'], 3)} | "
                     f"{_x(row['server_ratio'])} | {_x(ratio)}{mark} |")
    return "\n".join(lines)


def scaling_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Requests/s per worker count, and each count against one worker (same store, load)."""
    lines = ["| store | workload | c | workers | req/s | vs 1 worker | p50 ms | p99 ms | "
             "server CPU ms/req | errors |", "|" + "---|" * 10]
    for run in runs:
        r = run["result"]
        one = next((o for o in runs if o["store"] == run["store"] and o["workers"] == 1
                    and o["workload"] == run["workload"]), None)
        vs = _ratio(r["rps"], one["result"]["rps"]) if one is not None else None
        mark = ("" if vs is None or run["workers"] != 2 else
                (" ✔" if vs >= WORKER_SCALING_GOAL else " ✘"))
        lines.append(f"| {run['store']} | {run['workload']} | {run['concurrency']} | "
                     f"{run['workers']} | {_num(r['rps'])} | {_x(vs)}{mark} | "
                     f"{_num(r['lat_ms']['p50'], 2)} | {_num(r['lat_ms']['p99'], 2)} | "
                     f"{_num(r['server_cpu_ms_per_req'], 3)} | {r['errors']} |")
    return "\n".join(lines)


def ratios_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ("| Sceau config | workload | high c | req/s c=1 | req/s high c | "
            "req per server CPU-s, high c | p50 c=1 (lower better) | "
            "p99 high c (lower better) | targets |")
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['workload']} | {row['high_c']} | "
            f"{_x(row.get('rps_c1'))} | {_x(row.get('rps_high'))} | "
            f"{_x(row.get('per_cpu_high'))} | {_x(row.get('p50_c1'))} | "
            f"{_x(row.get('p99_high'))} | {row.get('verdict', '')} |"
        )
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


_OPENSSL_LINE = re.compile(r"^(aes-256-gcm|AES-256-GCM)\s+(.*)$", re.MULTILINE)


def parse_openssl_speed(text: str) -> dict[str, float]:
    """Bytes/s per block size from ``openssl speed -evp aes-256-gcm`` output.

    The last table has one row per cipher; each value is in thousands of bytes per second
    (``123456.78k``) for the block sizes named in the ``type`` header line.
    """
    header = re.search(r"^type\s+(.*)$", text, re.MULTILINE)
    row = _OPENSSL_LINE.findall(text)
    if header is None or not row:
        raise ValueError("no aes-256-gcm row in openssl speed output")
    sizes = [int(s) for s in re.findall(r"(\d+) bytes", header.group(1))]
    values = row[-1][1].split()
    if len(values) != len(sizes):
        raise ValueError("openssl speed row and header disagree")
    out: dict[str, float] = {}
    for size, value in zip(sizes, values, strict=True):
        if not value.endswith("k"):
            raise ValueError(f"unexpected openssl speed value {value!r}")
        out[str(size)] = float(value[:-1]) * 1000
    return out


_FILE_LINE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z ]*?)\s+(?P<value>[\d.]+) (?P<unit>MB/s|MiB)\b",
                        re.MULTILINE)


def parse_file_throughput(text: str) -> dict[str, float]:
    """``{"file protect MB/s": 812.0, "peak RSS MiB": 40.1, ...}`` from the script's lines."""
    return {f"{m['name'].strip()} {m['unit']}": float(m["value"])
            for m in _FILE_LINE.finditer(text)}


def reference_section(reference: Mapping[str, Any]) -> str:
    lines = ["## Client-side file throughput (physical reference)", ""]
    ossl = reference.get("openssl")
    if ossl and "bytes_per_s" in ossl:
        bps = ossl["bytes_per_s"].get("16384")
        lines.append(f"- `openssl speed -evp aes-256-gcm`, 16 KiB blocks, one core: "
                     f"**{_num(bps / 1e6 if bps else None)} MB/s**")
    elif ossl:
        lines.append(f"- openssl speed: {ossl.get('error')}")
    files = reference.get("file_throughput")
    if isinstance(files, Mapping) and files.get("error") is None and files:
        size = files.get("size_mib")
        for key, value in files.items():
            if key not in ("output", "size_mib", "size MiB"):
                lines.append(f"- {size} MiB file, {key}: **{_num(value, 0)}**")
    else:
        note = files.get("error") if isinstance(files, Mapping) else None
        lines.append(f"- `sceau file protect/open` of 1 GiB: {note or 'not measured'}")
    return "\n".join(lines)


def markdown(doc: Mapping[str, Any]) -> str:
    """The whole report: conditions, results, ratios, reference, notes."""
    meta = doc["meta"]
    parts = [
        f"# Sceau vs OpenBao Transit — {meta['started']}",
        "",
        f"Machine: {meta['cpus']} CPUs ({meta['cpu_model']}), {meta['python']}; "
        f"servers pinned to CPU 0, load generator to CPU 1; {meta['seconds']} s per run, "
        f"closed loop. {meta['openbao']}.",
        "",
        "## Results",
        "",
        results_table(doc["runs"]),
        "",
        "## Sceau / OpenBao",
        "",
        "Throughput ratios > 1 and latency ratios < 1 mean Sceau is ahead. "
        "Batches compare items/s. \"high c\" is 32, or 8 for batches of 100 items.",
        "",
        ratios_table(doc["ratios"]) if doc["ratios"] else "_No OpenBao runs to compare with._",
        "",
        reference_section(doc.get("reference", {})),
    ]
    if doc["ratios"]:
        at = parts.index("## Sceau / OpenBao") + 5  # after the ratios table
        parts[at:at] = [
            "", "Issue 17's targets: requests (batch items) per server CPU-second at the high "
            "concurrency ≥ 0.8× OpenBao for encrypt and decrypt, ≥ 0.6× for data keys, "
            "≥ 0.5× for batches; p50 at c=1 on SQLite ≤ 1.0 ms (encrypt, decrypt) and ≤ 1.2 ms "
            "(data keys).", "", issue_table(doc["runs"], doc["ratios"])]
    stores = store_rows(doc["runs"])
    if stores:
        parts += ["", "## PostgreSQL against SQLite", "",
                  "CPU per successful call at the high concurrency; the backends serving the "
                  "benchmark's database run on the other core and are counted in the last "
                  "ratio.", "", store_table(stores)]
    if doc.get("scaling"):
        parts += ["", "## Workers: one machine, every core", "",
                  "`sceau serve --workers N`, nothing pinned: the workers and the load "
                  f"generator share the machine's cores. Goal: ≥ {WORKER_SCALING_GOAL}× "
                  "requests/s with 2 workers.", "", scaling_table(doc["scaling"])]
    compared = baseline_rows(doc["runs"])
    if compared:
        parts += ["", f"## This checkout / baseline ({meta.get('baseline', '?')})", "",
                  "Same machine, same run, interleaved. Ratios > 1 (< 1 for p50) mean this "
                  "checkout is ahead.", "", baseline_table(compared)]
    if doc.get("flood"):
        parts += ["", flood_section(doc["flood"]).rstrip("\n")]
    notes = list(doc.get("notes") or [])
    busy = contended(doc["runs"])
    if busy:
        notes.append(
            "CPU 0 was shared with other processes during: " + "; ".join(busy)
            + ". Throughput and latency of those runs are pessimistic; CPU per request "
            "(from /proc) is the robust figure."
        )
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


# --- invalid-token flood (bench/flood.py, SECURITY-CASES 43) ----------------------------------

FLOOD_SLOWDOWN_LIMIT = 2.0
_FLOOD_PHASES = (
    ("alone_before", "valid alone (before)"),
    ("flooded", "valid + flood"),
    ("alone_after", "valid alone (after)"),
    ("flood_only", "flood alone"),
    ("flooded_garbage", "valid + garbage-only flood"),
    ("flooded_jwe", "valid + JWE-only flood"),
)


def _statuses(statuses: Mapping[str, int] | None) -> str:
    if not statuses:
        return "–"
    return ", ".join(f"{status} × {n:,}" for status, n in statuses.items())


def cpu1_others(phase: Mapping[str, Any]) -> float | None:
    """Share of CPU 1 used by neither generator during a flood phase (None without a flood).

    The flood process reads CPU 1's busy time over its window; the valid generator's own
    share (over its slightly shorter window) is subtracted when it ran too.
    """
    fl = phase.get("flood")
    if fl is None:
        return None
    valid = phase.get("valid")
    used = float(fl["generator_cpu_frac"]) + (valid["generator_cpu_frac"] if valid else 0.0)
    return max(0.0, float(fl["cpu1_busy_frac"]) - used)


def _flood_phase_row(name: str, phase: Mapping[str, Any]) -> str:
    valid = phase.get("valid")
    fl = phase.get("flood")
    # CPU figures of the valid generator's window when there is one, else the flood's.
    cpu = valid if valid is not None else fl
    assert cpu is not None
    return (
        f"| {name} | {_num(valid['rps']) if valid else '–'} | "
        f"{_num(valid['lat_ms']['p50'], 2) if valid else '–'} | "
        f"{_num(valid['lat_ms']['p99'], 2) if valid else '–'} | "
        f"{_num(fl['refused_per_s']) if fl else '–'} | "
        f"{_statuses(fl['statuses']) if fl else '–'} | "
        f"{_pct(cpu.get('server_cpu_frac'))} | "
        f"{_pct(cpu.get('cpu0_others_frac'))} | {_pct(cpu.get('cpu0_steal_frac'))} | "
        f"{_pct(valid['generator_cpu_frac']) if valid else '–'} | "
        f"{_pct(fl['generator_cpu_frac']) if fl else '–'} | "
        f"{_pct(fl['cpu1_busy_frac']) if fl else '–'} | {_pct(cpu1_others(phase))} |"
    )


def flood_section(flood: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> str:
    """The flood benchmark's part of the report: phases, slowdown, cost per refusal."""
    s = flood["summary"]
    phases = flood["phases"]
    lines = ["## Invalid-token flood (SECURITY-CASES 43, 49)", ""]
    if meta is not None:
        lines += [f"Run {meta.get('started')} on {meta.get('cpus')} CPUs "
                  f"({meta.get('cpu_model')}){', quick mode' if meta.get('quick') else ''}.", ""]
    lines += [
        f"{flood['server']} pinned to CPU 0. Valid callers: {flood['valid_workload']} at "
        f"c={flood['valid_concurrency']} (`bench.loadgen`); flood: a separate process on "
        f"{flood['flood_connections']} connections ({', '.join(flood['mix'])}); both "
        f"generators on CPU 1. {flood['seconds']} s per phase, {flood['class_seconds']} s "
        f"per class.",
        "",
        "| phase | valid req/s | p50 ms | p99 ms | flood refused/s | flood statuses | "
        "server core use | CPU 0 others | CPU 0 steal | valid gen CPU | flood gen CPU | "
        "CPU 1 busy | CPU 1 others |",
        "|" + "---|" * 13,
    ]
    for key, name in _FLOOD_PHASES:
        if key in phases:
            lines.append(_flood_phase_row(name, phases[key]))
    lines.append("")
    if s.get("throughput_slowdown") is not None or s.get("p99_slowdown") is not None:
        verdict = {True: "✔ within", False: "✘ over", None: "? not decided:"}[
            s.get("within_limit")]
        lines += [
            f"- **Slowdown of valid callers**: throughput alone / flooded "
            f"**{_x(s.get('throughput_slowdown'))}**, p99 flooded / alone "
            f"**{_x(s.get('p99_slowdown'))}** (p50 {_x(s.get('p50_slowdown'))}): "
            f"{verdict} the {FLOOD_SLOWDOWN_LIMIT:.0f}× limit. \"Alone\" is the mean of the "
            f"runs before and after.",
        ]
    if s.get("flood_refused_per_s") is not None:
        lines.append(f"- Flood during the flooded phase: {_num(s['flood_refused_per_s'])} "
                     f"refused/s ({_statuses(s.get('flood_statuses'))}); accepted: "
                     f"{s.get('flood_accepted', 0)}. By class: "
                     + "; ".join(f"{cls} {_num(c['refused_per_s'])}/s (p50 "
                                 f"{_num(c['lat_ms']['p50'], 1)} ms)"
                                 for cls, c in (s.get("flood_by_class") or {}).items()) + ".")
    g_only = s.get("garbage_only")
    if g_only:
        lines.append(f"- Diagnostic, garbage only ({_num(g_only['refused_per_s'])} refused/s): "
                     f"throughput {_x(g_only['throughput_slowdown'])}, p99 "
                     f"{_x(g_only['p99_slowdown'])} of the valid callers alone.")
    j_only = s.get("jwe_only")
    if j_only:
        verdict = {True: "✔ within", False: "✘ over", None: "? not decided:"}[
            j_only.get("within_limit")]
        lines.append(
            f"- **JWE with random keys only** (SECURITY-CASES 49; {j_only['connections']} "
            f"connections, `limits.jwe_per_ip_per_s` = {flood.get('jwe_per_ip_per_s', '?')}): "
            f"valid callers' throughput **{_x(j_only['throughput_slowdown'])}**, p99 "
            f"**{_x(j_only['p99_slowdown'])}**: {verdict} the {FLOOD_SLOWDOWN_LIMIT:.0f}× "
            f"limit. Flood {_num(j_only['refused_per_s'])} refused/s "
            f"({_statuses(j_only.get('statuses'))}), of which "
            f"{_num(j_only.get('private_key_ops_per_s'))}/s reached a private-key operation "
            f"and {_num(j_only.get('budget_refusals_per_s'))}/s were refused by the budget "
            f"before one (server counters: {_pct(j_only.get('private_key_op_share'))} reached "
            f"one); accepted: {j_only.get('accepted', 0)}.")
    if s.get("cpu_ms_per_refusal") is not None:
        lines.append(f"- Server CPU per refused request, flood alone (mix): "
                     f"**{_num(s['cpu_ms_per_refusal'], 3)} ms** at "
                     f"{_num(s.get('flood_only_refused_per_s'))} refused/s; estimated from the "
                     f"flooded phase: {_num(s.get('cpu_ms_per_refusal_flooded_est'), 3)} ms "
                     f"(valid calls cost {_num(s.get('cpu_ms_per_valid_alone'), 3)} ms each).")
    if flood.get("es256_verify_us") is not None:
        lines.append(f"- One failing ES256 verification (`cryptography`): "
                     f"{_num(flood['es256_verify_us'], 0)} µs of CPU on this machine.")
    g, c = s.get("generators", {}), s.get("contention", {})
    lines.append(f"- Generators on CPU 1: valid ≤ {_pct(g.get('valid_cpu_frac_max'))}, flood ≤ "
                 f"{_pct(g.get('flood_cpu_frac_max'))}, CPU 1 busy ≤ "
                 f"{_pct(g.get('cpu1_busy_frac_max'))}. Contention: other processes ≤ "
                 f"{_pct(c.get('cpu0_others_frac_max'))} of CPU 0; steal ≤ "
                 f"{_pct(c.get('cpu0_steal_frac_max'))} (CPU 0), "
                 f"{_pct(c.get('cpu1_steal_frac_max'))} (CPU 1).")
    by_class = s.get("by_class") or {}
    if by_class:
        lines += [
            "",
            "Each class alone (`audited-garbage` is diagnostic, not in the mix: guard-refused "
            "junk naming the registered `kid`, so audited without signature work):",
            "",
            "| class | refused/s | statuses | server CPU ms/refusal | server core use | "
            "CPU 0 others | audit jobs/refusal | refusal p50 / p99 ms | flood gen CPU | "
            "CPU 1 others | private-key ops/refusal |",
            "|" + "---|" * 11,
        ]
        for cls, row in by_class.items():
            lines.append(
                f"| {cls} | {_num(row['refused_per_s'])} | {_statuses(row['statuses'])} | "
                f"{_num(row['cpu_ms_per_refusal'], 3)} | {_pct(row['server_cpu_frac'])} | "
                f"{_pct(row.get('cpu0_others_frac'))} | "
                f"{_num(row['audit_jobs_per_refusal'], 2)} | "
                f"{_num(row['lat_ms']['p50'], 2)} / {_num(row['lat_ms']['p99'], 2)} | "
                f"{_pct(row.get('generator_cpu_frac'))} | {_pct(row.get('cpu1_others_frac'))} | "
                f"{_num(row.get('private_key_ops_per_refusal'), 2)} |"
            )
    if flood.get("notes"):
        lines += ["", *(f"- {note}" for note in flood["notes"])]
    return "\n".join(lines) + "\n"
