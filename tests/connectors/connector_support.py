"""Helpers shared by the connector tests."""

from __future__ import annotations

import subprocess

from typer.testing import CliRunner

from sceau.cli.main import cli


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
