"""Helpers shared by the connector tests."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
from typing import Any

from typer.testing import CliRunner

from sceau.cli.main import cli
from sceau.client import Client
from sceau.connectors.relay import Relay

SENDER, TO, HIDDEN = "alice@example.com", "bob@example.com", "erin@example.com"
VICTIM = "victim@example.com"
PASSWORD = "correct horse battery staple"


def invoke(*args: str, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    """Run the `sceau` command line in this process (a subprocess costs seconds of imports).

    The commands under test report their own errors and exit codes, so this is what the
    console script does; `support.run_cli` still covers the real entry point in a few tests.
    """
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    proc = subprocess.CompletedProcess(list(args), result.exit_code, result.stdout_bytes,
                                       result.stderr_bytes)
    if check and proc.returncode != 0:
        raise AssertionError(f"sceau {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr.decode()}")
    return proc


class Sink:
    """The next hop: keeps what it receives, and whether it came over TLS."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.over_tls: list[bool] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        self.over_tls.append(session.ssl is not None)
        return "250 OK"


def send(relay: Relay, data: bytes, *, login: str | None = SENDER, password: str = PASSWORD,
         tls: bool = True, cafile: str | None = None, rcpt: tuple[str, ...] = (TO,)) -> None:
    with smtplib.SMTP(relay.host, relay.port, timeout=30) as smtp:
        if tls:
            smtp.starttls(context=ssl.create_default_context(cafile=cafile))
        if login is not None:
            smtp.login(login, password)
        smtp.sendmail(SENDER, list(rcpt), data)


def owned(client: Client, user: str) -> int:
    return sum(1 for _ in client.iter_keys(user=user, role="owner"))
