"""Dashboard and audit pages: counts, a chart, recent denials, browsing, verify, export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from sceau.core.verify import verify_lines
from sceau.service.console.web import (
    PREFIX,
    Console,
    Redirect,
    not_found,
    query_string,
)
from sceau.store.audit import iter_audit_lines, newest_audit_lines
from sceau.store.keys import count_keys_by_status
from sceau.vocab import Action, Outcome, Role

AUDIT_PAGE = 50
# A filtered page scans at most this many records back from its cursor (newest first);
# the "older" link continues from where the scan stopped.
AUDIT_SCAN = 20_000
CHART_HOURS = 24
CHART_SCAN = 200_000
ACCESS_ACTIONS = frozenset({Action.ENCRYPT, Action.DECRYPT, Action.GENERATE_DATA_KEY,
                            Action.GET_DATA_KEY})
AUDIT_FILTERS = ("action", "outcome", "user", "app", "key")


def _time_s(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp())


@dataclass(frozen=True)
class Bar:
    """One hour of the chart, with its SVG geometry computed here (no script needed)."""

    label: str
    granted: int
    denied: int
    x: int
    granted_y: int
    granted_h: int
    denied_y: int
    denied_h: int


CHART_W, CHART_H, BAR_W = 720, 160, 24


def chart(records: list[dict[str, Any]], now: int) -> tuple[list[Bar], int]:
    """Accesses granted and denied per hour over the last day, as stacked SVG bars."""
    start = (now // 3600 - CHART_HOURS + 1) * 3600
    granted = [0] * CHART_HOURS
    denied = [0] * CHART_HOURS
    for rec in records:
        slot = (_time_s(rec["time"]) - start) // 3600
        if 0 <= slot < CHART_HOURS:
            if rec["outcome"] == Outcome.GRANTED:
                granted[slot] += 1
            else:
                denied[slot] += 1
    peak = max([g + d for g, d in zip(granted, denied, strict=True)] + [1])
    bars = []
    for i in range(CHART_HOURS):
        gh = granted[i] * CHART_H // peak
        dh = denied[i] * CHART_H // peak
        hour = datetime.fromtimestamp(start + i * 3600, UTC).strftime("%H:00")
        bars.append(Bar(hour, granted[i], denied[i], i * (CHART_W // CHART_HOURS),
                        CHART_H - gh, gh, CHART_H - gh - dh, dh))
    return bars, peak


def recent_accesses(console: Console, now: int) -> tuple[list[dict[str, Any]],
                                                         list[dict[str, Any]]]:
    """(accesses of the last day, the 10 latest denials), newest first."""
    since = now - CHART_HOURS * 3600
    accesses: list[dict[str, Any]] = []
    denials: list[dict[str, Any]] = []
    before: int | None = None
    scanned = 0
    with console.rt.engines.read.connect() as conn:
        while scanned < CHART_SCAN:
            rows = newest_audit_lines(conn, before=before, limit=2000)
            if not rows:
                break
            scanned += len(rows)
            before = rows[-1][0]
            old = False
            for _seq, line in rows:
                rec = json.loads(line)
                if _time_s(rec["time"]) < since:
                    old = True
                if rec["outcome"] == Outcome.DENIED and len(denials) < 10:
                    denials.append(rec)
                if not old and rec["action"] in ACCESS_ACTIONS:
                    accesses.append(rec)
            if old and len(denials) >= 10:
                break
    return accesses, denials


def browse(console: Console, filters: dict[str, str], before: int | None,
           ) -> tuple[list[dict[str, Any]], int | None]:
    """A page of records matching ``filters`` (exact values), newest first."""
    wanted = {k: v for k, v in filters.items() if v}
    key = wanted.pop("key", None)
    out: list[dict[str, Any]] = []
    scanned = 0
    cursor = before
    with console.rt.engines.read.connect() as conn:
        while len(out) < AUDIT_PAGE and scanned < AUDIT_SCAN:
            rows = newest_audit_lines(conn, before=cursor, limit=1000, key=key)
            if not rows:
                return out, None
            for seq, line in rows:
                scanned += 1
                cursor = seq
                rec = json.loads(line)
                if all(str(rec.get(k)) == v for k, v in wanted.items()):
                    out.append(rec)
                    if len(out) == AUDIT_PAGE:
                        break
    return out, cursor


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int
    checkpoints: int
    nodes: dict[str, int]
    problem: str | None


def verify_store(console: Console) -> Verification:
    """The offline verifier over the whole stored trail and the service's JWKS."""
    jwks = console.rt.keystore.public_jwks()
    with console.rt.engines.read.connect() as conn:
        report = verify_lines((line for _s, _k, line in iter_audit_lines(conn)), jwks,
                              stop_at_first=True)
    first = report.first_problem
    return Verification(report.ok, report.records, report.checkpoints, report.nodes,
                        str(first) if first else None)


def router(console: Console, route_class: type) -> APIRouter:
    r = APIRouter(prefix=PREFIX, route_class=route_class)

    @r.get("/")
    def home(request: Request) -> Response:
        console.require(request)
        done = request.query_params.get("done", "")
        raise Redirect(f"{PREFIX}/dashboard" + (f"?done={done}" if done.isalpha() else ""))

    @r.get("/dashboard")
    def dashboard(request: Request) -> Response:
        session = console.require(request)
        now = console.now()
        counts: dict[str, int] = {}
        bars: list[Bar] = []
        peak = 0
        denials: list[dict[str, Any]] = []
        if session.account.sees_all:
            with console.rt.engines.read.connect() as conn:
                counts = count_keys_by_status(conn, now)
            accesses, denials = recent_accesses(console, now)
            bars, peak = chart(accesses, now)
        notices = {"password": "Password changed.", "totp": "Two-factor settings saved."}
        return console.render(
            request, "dashboard.html", session=session, counts=counts, bars=bars, peak=peak,
            denials=denials, chart_w=CHART_W, chart_h=CHART_H, bar_w=BAR_W,
            total=sum(counts.values()), notice=notices.get(request.query_params.get("done", "")),
        )

    @r.get("/audit")
    def audit_page(request: Request) -> Response:
        session = console.require(request, Role.ADMIN, Role.AUDITOR)
        filters = {k: request.query_params.get(k, "").strip()[:320] for k in AUDIT_FILTERS}
        before_text = request.query_params.get("before", "")
        before = int(before_text) if before_text.isdigit() else None
        records, cursor = browse(console, filters, before)
        verification = verify_store(console) if request.query_params.get("verify") else None
        return console.render(
            request, "audit.html", session=session, records=records, filters=filters,
            actions=[str(a) for a in Action], outcomes=[str(o) for o in Outcome],
            older=query_string(filters, before=str(cursor)) if cursor else None,
            verify_query=query_string(filters, verify="1"), verification=verification,
            export_query=query_string({}),
        )

    @r.get("/audit/export")
    def export(request: Request) -> Response:
        console.require(request, Role.ADMIN, Role.AUDITOR)

        def lines() -> Iterator[bytes]:
            # Exactly the stored lines, checkpoints interleaved (SPEC §8, §10).
            with console.rt.engines.read.connect() as conn:
                for _seq, _kind, line in iter_audit_lines(conn):
                    yield line.encode("utf-8") + b"\n"

        stamp = datetime.fromtimestamp(console.now(), UTC).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(
            lines(), media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="sceau-audit-{stamp}.jsonl"'},
        )

    @r.get("/static/{name}")
    def static(request: Request, name: str) -> Response:
        found = console.static.get(name)
        if found is None:
            raise not_found()
        body, media = found
        return Response(body, media_type=media, headers={"Cache-Control": "max-age=300"})

    return r
