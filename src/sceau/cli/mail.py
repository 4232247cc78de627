"""``sceau mail ...``: protect and open messages, SMTP relay.

Exit codes: 0 done, 1 the message could not be protected or opened (one line
``sceau: error: FILE: reason``, nothing written), 2 usage error.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from sceau.connectors.files import AtomicFile, describe_failure
from sceau.errors import SceauError

app = typer.Typer(help="Mail: protect, open, relay.", no_args_is_help=True)

EXIT_FAILED = 1
EXIT_USAGE = 2

ProfileOpt = Annotated[
    Path,
    typer.Option("--profile", "-p", envvar="SCEAU_PROFILE", help="client profile file",
                 exists=True, dir_okay=False),
]
InputArg = Annotated[Path, typer.Argument(help="message file (.eml), or - for stdin")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="output file, or - for stdout")]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite an existing output")]


def _error(where: Path | str, reason: str, code: int = EXIT_FAILED) -> typer.Exit:
    sys.stderr.write(f"sceau: error: {where}: {reason}\n")
    return typer.Exit(code)


def _client(profile: Path, user: str | None = None) -> Any:
    from sceau.client import Client

    try:
        return Client.from_profile(profile, user=user)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise _error(profile, f"not a usable profile ({exc})", EXIT_USAGE) from None


def _read(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _error(path, exc.strerror or str(exc)) from None


def _write(path: Path, data: bytes, force: bool) -> None:
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    directory = path.parent if str(path.parent) else Path(".")
    with AtomicFile(directory) as out:
        out.file.write(data)
        out.publish(path, overwrite=force)


def _run(source: Path, output: Path, force: bool, work: Any) -> None:
    if str(output) != "-" and not force and output.exists():
        raise _error(output, "exists (use --force to overwrite)")
    data = _read(source)
    try:
        result = work(data)
        _write(output, result, force)
    except (SceauError, OSError, ValueError, UnicodeError) as exc:
        raise _error(source, describe_failure(exc)) from None


@app.command("protect")
def protect(
    source: InputArg,
    output: OutputOpt,
    profile: ProfileOpt,
    protect_subject: Annotated[bool, typer.Option("--protect-subject",
                                                  help="move the Subject inside too")] = False,
    force: ForceOpt = False,
) -> None:
    """Protect a message under one new key: owner From, recipients To, Cc and Bcc (a header
    that could be read two ways is refused)."""
    from sceau.connectors.mail import protect_message

    with _client(profile) as client:
        def work(data: bytes) -> bytes:
            result = protect_message(client, data, protect_subject=protect_subject)
            sys.stderr.write(f"protected for {', '.join(result.recipients) or 'the sender only'}"
                             f" (owner {result.sender}, key {result.key_id})\n")
            return result.message

        _run(source, output, force, work)


@app.command("open")
def open_(
    source: InputArg,
    output: OutputOpt,
    profile: ProfileOpt,
    user: Annotated[str | None, typer.Option("--user", "-u", help="act for this user")] = None,
    force: ForceOpt = False,
) -> None:
    """Restore the original message from a protected one."""
    from sceau.connectors.mail import open_message

    with _client(profile, user) as client:
        _run(source, output, force, lambda data: open_message(client, data, user=user))


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint=option)
    return host.strip("[]"), int(port)


@app.command("relay")
def relay(
    next_hop: Annotated[str, typer.Option("--next-hop", help="HOST:PORT to forward to")],
    profile: ProfileOpt,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to accept mail on")]
    = "127.0.0.1:10025",
    tag: Annotated[str, typer.Option("--tag", help="subject tag asking for protection "
                                     "(removed); empty to disable")] = "[secure]",
    header: Annotated[str, typer.Option("--header", help="header field asking for protection "
                                        "(removed); empty to disable")] = "X-Sceau-Protect",
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", exists=True, dir_okay=False,
                                                  help="PEM certificate for STARTTLS")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", exists=True, dir_okay=False,
                                                 help="PEM private key for STARTTLS")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="use DIR/tls/cert.pem and key.pem for STARTTLS")] = None,
    users: Annotated[Path | None, typer.Option(
        "--users", exists=True, dir_okay=False,
        help="require AUTH (PLAIN/LOGIN over TLS) against user:argon2-hash lines; "
             "needed to listen off a loopback address")] = None,
    protect_subject: Annotated[bool, typer.Option(
        "--protect-subject", help="move the Subject of protected messages inside")] = False,
    next_hop_ca: Annotated[Path | None, typer.Option(
        "--next-hop-ca", exists=True, dir_okay=False,
        help="PEM CA file to verify the next hop's STARTTLS certificate (default: the "
             "system store); a certificate that does not verify is answered 451")] = None,
    require_next_hop_tls: Annotated[bool, typer.Option(
        "--require-next-hop-tls",
        help="answer 451 instead of forwarding in plain SMTP when the next hop offers "
             "no STARTTLS")] = False,
) -> None:
    """Relay SMTP: protect messages marked by the header or subject tag, forward all.

    A header that could be read two ways is refused (554). Off a loopback address, --users
    is required. STARTTLS to the next hop whenever offered, its certificate verified.
    """
    from sceau.connectors.relay import (
        Credentials,
        ProtectingHandler,
        Relay,
        client_tls_context,
        server_tls_context,
    )

    listen_at = _host_port(listen, "--listen")
    hop = _host_port(next_hop, "--next-hop")
    if data_dir is not None and tls_cert is None:
        tls_cert, tls_key = data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-key")
    try:
        tls = server_tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
        credentials = Credentials.load(users) if users is not None else None
    except (OSError, ValueError, SceauError) as exc:
        raise _error(tls_cert or users or "relay", describe_failure(exc), EXIT_USAGE) from None
    try:
        hop_tls = client_tls_context(next_hop_ca)
    except (OSError, ValueError) as exc:  # not a PEM file of certificates
        raise _error(next_hop_ca or "relay", describe_failure(exc), EXIT_USAGE) from None
    client = _client(profile)
    handler = ProtectingHandler(client, hop, tag=tag or None, header=header or None,
                                protect_subject=protect_subject, next_hop_tls=hop_tls,
                                require_next_hop_tls=require_next_hop_tls)
    running = Relay(handler, listen_at[0], listen_at[1], tls=tls, credentials=credentials)
    try:
        running.start()
    except (OSError, SceauError) as exc:
        client.close()
        raise _error("relay", describe_failure(exc), EXIT_USAGE) from None
    notes = (" (STARTTLS required)" if tls else "") + (" (AUTH required)" if credentials else "")
    hop_notes = "STARTTLS required" if require_next_hop_tls else "STARTTLS when offered"
    sys.stderr.write(f"sceau mail relay: listening on {listen_at[0]}:{listen_at[1]}{notes}, "
                     f"forwarding to {hop[0]}:{hop[1]} ({hop_notes})\n")
    sys.stderr.flush()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    running.stop()
    client.close()


@app.command("hash-password")
def hash_password_cmd(
    user: Annotated[str, typer.Argument(help="user name (an address to bind From to it)")],
) -> None:
    """Print a `user:argon2-hash` line for the relay's --users file (password from stdin
    or a prompt)."""
    from sceau.connectors.relay import hash_password

    if sys.stdin.isatty():
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise _error(user, "empty password", EXIT_USAGE)
    typer.echo(f"{user}:{hash_password(password)}")
