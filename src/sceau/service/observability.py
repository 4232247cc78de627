"""Structured JSON logs and Prometheus metrics. Neither ever carries a secret.

Log lines name the operation, outcome code, application, duration and request id; never a
token, parameter, plaintext or key. Metrics live in a registry owned by the runtime.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from enum import StrEnum
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: tracebacks can quote local values.
            out["exc_type"] = record.exc_info[0].__name__
        return json.dumps(out, separators=(",", ":"), default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


class NotReady(StrEnum):
    """Why a node is not ready, as ``/readyz`` tells anonymous callers: a class, no detail.

    The detail (a file path, a PKCS#11 error, an exception type) goes to the log only.
    """

    SELFTEST = "selftest"
    KEYSTORE = "keystore"
    STORE = "store"
    AUDIT = "audit"


class Metrics:
    """The service's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "sceau_calls", "API calls by operation and outcome code", ["op", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sceau_call_seconds", "API call latency by operation", ["op"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.audit_write = Histogram(
            "sceau_audit_write_seconds", "Time to make one batch of audit records durable",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.audit_batch = Histogram(
            "sceau_audit_batch_jobs", "Jobs per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )
        self.ready = Gauge("sceau_ready", "1 when the service is ready", registry=self.registry)
        self.not_ready = Gauge(
            "sceau_not_ready", "1 while this class of problem keeps the node unready",
            ["problem"], registry=self.registry,
        )
        for problem in NotReady:
            self.not_ready.labels(str(problem)).set(0)
        # SECURITY-CASES 49: every private-key operation done for an inbound JWE, counted
        # just before it runs, and every JWE refused by the per-address budget instead.
        self.jwe_private_key_ops = Counter(
            "sceau_jwe_private_key_ops", "Private-key operations on inbound JWE, by alg",
            ["alg"], registry=self.registry,
        )
        self.jwe_budget_refusals = Counter(
            "sceau_jwe_budget_refusals",
            "Inbound JWE refused by the per-address budget before any private-key operation",
            registry=self.registry,
        )

    def observe_batch(self, jobs: int, seconds: float) -> None:
        self.audit_write.observe(seconds)
        self.audit_batch.observe(jobs)
