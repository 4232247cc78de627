"""``sceau audit ...``: verify, export and archive the trail (opposable to a third party).

None of these needs a running service: they read the store (SQLite file or PostgreSQL)
directly, and take the audit public keys from the keystore, or from a JWKS file.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from sceau.auditlog.export import ExportFormat, follow_export, iter_export, write_atomic
from sceau.auditlog.syslog import DEFAULT_FACILITY, DEFAULT_SD_ID, SyslogOptions, facility_code
from sceau.auditlog.verify import (
    Verification,
    read_jwks,
    read_start_checkpoints,
    verify_file,
    verify_store,
)
from sceau.auditlog.witness import WitnessEvidence, read_witness
from sceau.cli.common import DataDir, JsonFlag, config_from, fail, print_json
from sceau.config import Config
from sceau.keystore.base import Keystore
from sceau.store.db import Engines, create_engines

app = typer.Typer(help="Audit trail: verify, export, archive.", no_args_is_help=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="read this database instead of the data dir's"),
]


def _engines(data_dir: Path | None, database_url: str | None) -> tuple[Engines, Config | None]:
    if database_url:
        return create_engines(database_url), None
    config = config_from(data_dir)
    return create_engines(config.database_url), config


def _open_keystore(config: Config) -> Keystore:
    from sceau.keystore import open_keystore
    from sceau.service.runtime import keystore_settings

    return open_keystore(keystore_settings(config))


def _print_witness(result: Verification) -> None:
    witness = result.witness
    if witness is None:
        return
    typer.echo(f"witness: {len(witness.points)} signed positions in {len(witness.sources)} "
               f"file(s), {witness.unreadable} unreadable line(s) skipped")
    if not witness.points:
        typer.echo("witness: WARNING: it holds no signed checkpoint; it protects nothing yet")
    for node, window in sorted((result.report.windows or {}).items()):
        after = (f"after witnessed node_seq {window.witnessed}" if window.witnessed
                 else "(never witnessed)")
        if window.records:
            typer.echo(f"unprotected {node}: {window.records} record(s) {after} "
                       f"(seq {window.first_seq}..{window.last_seq})")
        else:
            typer.echo(f"unprotected {node}: none (witnessed up to node_seq {window.witnessed})")


def _print_registry(result: Verification) -> None:
    registry = result.registry
    if registry is None:
        return
    how = "seals verified" if registry.seals_checked else (
        "seals NOT checked: no keystore (run without --jwks on the data dir)")
    typer.echo(f"registry: {len(registry.nodes)} node(s), {how}")


def _print_verification(result: Verification, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json())
        return
    report = result.report
    typer.echo(f"records: {report.records}  checkpoints: {report.checkpoints}")
    for node, last in sorted(report.nodes.items()):
        typer.echo(f"node {node}: last node_seq {last}")
    for anchor in result.anchors:
        where = "given" if anchor.given else f"line {anchor.line}"
        how = (
            f", confirmed by AUDIT_ARCHIVE seq {anchor.confirmed_by}"
            if anchor.confirmed_by is not None
            else ""
        )
        typer.echo(f"anchor {anchor.head.node}: starts after node_seq {anchor.head.node_seq} "
                   f"({where}{how})")
    _print_registry(result)
    _print_witness(result)
    if result.ok:
        extra = (", and the trail reaches every witnessed position"
                 if result.witness is not None else "")
        typer.echo(f"OK: every hash, signature, link and checkpoint verifies{extra}")
        return
    first = result.problems[0]
    typer.echo(f"FAILED: {first}")
    if len(result.problems) > 1:
        typer.echo(f"({len(result.problems)} problems in all; the first is shown)")


@app.command("verify")
def verify(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    export: Annotated[
        Path | None, typer.Option("--export", help="verify this JSON Lines export instead")
    ] = None,
    jwks: Annotated[
        Path | None,
        typer.Option("--jwks", help="JWKS file (required with --export; default: the keystore)"),
    ] = None,
    start_checkpoint: Annotated[
        Path | None,
        typer.Option("--start-checkpoint",
                     help="file of checkpoint lines to start chains from (archive boundary)"),
    ] = None,
    witness: Annotated[
        list[Path] | None,
        typer.Option("--witness",
                     help="witness file or directory (DATA_DIR/witness), syslog capture or "
                          "earlier export: positions the trail must still reach (repeatable)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Verify the audit trail offline; exit non-zero naming the first bad line and seq."""
    evidence: WitnessEvidence | None = None
    if export is not None:
        if jwks is None:
            fail("--export needs --jwks FILE", "fetch it from GET /.well-known/jwks.json")
        keys = read_jwks(jwks)
        start = read_start_checkpoints(start_checkpoint, keys) if start_checkpoint else None
        evidence = read_witness(witness, keys) if witness else None
        result = verify_file(export, keys, start=start, witness=evidence)
    else:
        engines, config = _engines(data_dir, database_url)
        # The keystore gives the audit keys (unless --jwks) and checks the registry seals.
        keystore = None if jwks is not None else _open_keystore(config or config_from(data_dir))
        try:
            keys = read_jwks(jwks) if jwks is not None else (
                keystore.public_jwks() if keystore is not None else {})
            start = read_start_checkpoints(start_checkpoint, keys) if start_checkpoint else None
            # The witness first, the store after: a checkpoint is witnessed only once
            # committed, so a live store read later holds everything the witness read saw.
            evidence = read_witness(witness, keys) if witness else None
            result = verify_store(engines, keys, start=start, witness=evidence, sealer=keystore)
        finally:
            if keystore is not None:
                keystore.close()
            engines.dispose()
    _print_verification(result, as_json)
    if not result.ok:
        first = result.problems[0]
        if first.line is None:
            fail(f"audit verification failed for node {first.node}: "
                 f"{first.kind}: {first.message}")
        fail(f"audit verification failed at line {first.line}, seq {first.seq}: "
             f"{first.kind}: {first.message} (node {first.node})")


class _StopFlag:
    """Set by SIGTERM/SIGINT so that --follow ends between two polls."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self) -> bool:
        return self.stopped

    def handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopped = True


@app.command("export")
def export(
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl or syslog")] = (
        ExportFormat.JSONL
    ),
    since: Annotated[int, typer.Option("--since", help="only records with seq > SEQ", min=0)] = 0,
    follow: Annotated[bool, typer.Option("--follow", help="keep streaming new records")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file (atomic unless --follow)")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    facility: Annotated[
        str, typer.Option(help="syslog facility name or number")
    ] = DEFAULT_FACILITY,
    hostname: Annotated[
        str | None, typer.Option(help="syslog HOSTNAME (default: this host)")
    ] = None,
    sd_id: Annotated[str, typer.Option("--sd-id", help="syslog SD-ID")] = DEFAULT_SD_ID,
    poll: Annotated[float, typer.Option(help="--follow poll interval, seconds", min=0.05)] = 1.0,
    lag: Annotated[
        float | None,
        typer.Option(help="--follow: emit a seq only this long after it was allocated "
                          "(default 0 on SQLite, 5 s on PostgreSQL)", min=0),
    ] = None,
) -> None:
    """Export the trail as stored JSON Lines or RFC 5424 syslog (stdout by default)."""
    options = SyslogOptions(facility=facility_code(facility), sd_id=sd_id,
                            **({"hostname": hostname} if hostname else {}))
    engines, _config = _engines(data_dir, database_url)
    try:
        if not follow:
            lines = iter_export(engines, fmt, since, syslog=options)
            if output is not None:
                count = write_atomic(output, lines)
                typer.echo(f"wrote {count} lines to {output}", err=True)
            else:
                _write_stream(lines, sys.stdout, flush_each=False)
            return
        stop = _StopFlag()
        signal.signal(signal.SIGTERM, stop.handle)
        signal.signal(signal.SIGINT, stop.handle)
        lines = follow_export(engines, fmt, since, poll_s=poll, lag_s=lag, syslog=options,
                              stop=stop)
        if output is not None:
            with output.open("a", encoding="utf-8", newline="\n") as handle:
                _write_stream(lines, handle, flush_each=True)
        else:
            _write_stream(lines, sys.stdout, flush_each=True)
    finally:
        engines.dispose()


def _write_stream(lines: Iterator[str], out: Any, *, flush_each: bool) -> None:
    for line in lines:
        out.write(line + "\n")
        if flush_each:
            out.flush()
    out.flush()


@app.command("archive")
def archive(
    before: Annotated[int, typer.Option("--before", help="archive records with seq < SEQ", min=2)],
    output: Annotated[Path, typer.Option("--output", "-o", help="archive file (must not exist)")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Move old records to a verified archive file, keep signed anchors, audit the removal."""
    from sceau.admin import admin_session
    from sceau.auditlog.archive import archive_audit

    config = config_from(data_dir)
    with admin_session(config) as session:
        result = archive_audit(session, before=before, output=output)
    if as_json:
        print_json(result.to_json())
        return
    typer.echo(f"archived {result.records} records (seq <= {result.through_seq}) to "
               f"{result.path}, sha256 {result.sha256}")
    for node, head in sorted(result.anchors.items()):
        typer.echo(f"anchor {node}: node_seq {head.node_seq} (kept in the store)")
    typer.echo(f"recorded as AUDIT_ARCHIVE seq {result.record_seq}")
