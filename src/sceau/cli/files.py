"""``sceau file ...``: protect and open files client-side (STREAM format).

Exit codes a script can rely on: 0 every file done, 1 at least one file failed (each
failure is one line ``sceau: error: FILE: reason`` on stderr, and nothing was written for
it), 2 usage error, 130 interrupted (the file in progress left no output).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from sceau.connectors.files import SUFFIX, describe_failure, open_file, protect_file
from sceau.errors import SceauError

app = typer.Typer(help="Files: protect and open .sceau files.", no_args_is_help=True)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# A bar is worth drawing only when the work takes a noticeable time.
_PROGRESS_BYTES = 16 * 1024 * 1024
_PROGRESS_FILES = 5

ProfileOpt = Annotated[
    Path,
    typer.Option("--profile", "-p", envvar="SCEAU_PROFILE", help="client profile file",
                 exists=True, dir_okay=False),
]
UserOpt = Annotated[str | None, typer.Option("--user", "-u", help="act for this user (sub)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite existing outputs")]


def _error(path: Path | str, reason: str) -> None:
    sys.stderr.write(f"sceau: error: {path}: {reason}\n")
    sys.stderr.flush()


def _client(profile: Path, user: str | None) -> Any:
    from sceau.client import Client

    try:
        return Client.from_profile(profile, user=user)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        _error(profile, f"not a usable profile ({exc})")
        raise typer.Exit(EXIT_USAGE) from None


def _expand(paths: list[Path], recursive: bool) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to protect, and the arguments refused outright (with their reason)."""
    files: list[Path] = []
    refused: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            if not recursive:
                refused.append((path, "is a directory (use --recursive)"))
                continue
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    candidate = Path(root) / name
                    # Already protected files, our own temporary files and links (whose
                    # targets may lie elsewhere) are not part of a recursive protect.
                    if name.endswith(SUFFIX) or name.startswith(".sceau-"):
                        continue
                    if candidate.is_symlink() or not candidate.is_file():
                        continue
                    files.append(candidate)
        else:
            files.append(path)
    return files, refused


@contextmanager
def _progress(total: int, count: int) -> Iterator[Callable[[str, int, int], None] | None]:
    """A Rich bar over all bytes, on a terminal and for large or many files only."""
    if not sys.stderr.isatty() or (total < _PROGRESS_BYTES and count < _PROGRESS_FILES):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=total)

        def update(name: str, base: int, done: int) -> None:
            bar.update(task, description=name, completed=base + done)

        yield update


def _run(items: list[Path], sizes: list[int], one: Callable[[Path, Callable[[int], None] | None],
                                                          str]) -> int:
    """Process every item, reporting each failure; return how many failed."""
    failed = 0
    with _progress(sum(sizes), len(items)) as update:
        base = 0
        for path, size in zip(items, sizes, strict=True):
            tick: Callable[[int], None] | None = None
            if update is not None:
                name, start = path.name, base

                def tick(done: int, name: str = name, start: int = start) -> None:
                    update(name, start, done)

            try:
                line = one(path, tick)
            except KeyboardInterrupt:
                _error(path, "interrupted; nothing written for this file")
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except (SceauError, OSError, ValueError) as exc:
                failed += 1
                _error(path, describe_failure(exc))
            else:
                typer.echo(line)
            base += size
    return failed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@app.command("protect")
def protect(
    paths: Annotated[list[Path], typer.Argument(help="files (or directories with --recursive)")],
    profile: ProfileOpt,
    user: UserOpt = None,
    to: Annotated[list[str] | None,
                  typer.Option("--to", help="recipient principal (repeatable)")] = None,
    name: Annotated[str | None,
                    typer.Option("--name", help="key name (default: the file name)")] = None,
    recursive: Annotated[bool,
                         typer.Option("--recursive", "-r", help="protect directory trees")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="keep the originals")] = False,
    force: ForceOpt = False,
) -> None:
    """Protect each file into FILE.sceau (one new key per file); remove originals unless --keep."""
    files, refused = _expand(paths, recursive)
    for path, reason in refused:
        _error(path, reason)
    with _client(profile, user) as client:

        def one(path: Path, tick: Callable[[int], None] | None) -> str:
            result = protect_file(client, path, name=name, recipients=to, force=force,
                                  keep=keep, user=user, progress=tick)
            return f"{result.source} -> {result.output}  key {result.key_id}"

        failed = _run(files, [_size(f) for f in files], one) + len(refused)
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command("open")
def open_(
    paths: Annotated[list[Path], typer.Argument(help=".sceau files")],
    profile: ProfileOpt,
    user: UserOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="directory to write into (default: beside each file)",
        exists=True, file_okay=False)] = None,
    force: ForceOpt = False,
) -> None:
    """Open .sceau files, restoring each file's original name (and mtime)."""
    with _client(profile, user) as client:

        def one(path: Path, tick: Callable[[int], None] | None) -> str:
            result = open_file(client, path, out_dir=output, force=force, user=user,
                               progress=tick)
            return f"{result.source} -> {result.output}  key {result.key_id}"

        failed = _run(paths, [_size(p) for p in paths], one)
    if failed:
        raise typer.Exit(EXIT_FAILED)
