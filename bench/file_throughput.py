"""Throughput of the file connector: protect and open a large file, without the service.

The one service round trip per file (``generate-data-key`` / ``get-data-key``) is replaced
by a local key source, so what is measured is the connector's own work: reading, the
suite-2 STREAM, writing the temporary file, fsync and the atomic rename. Prints MB/s
(10^6 bytes per second) for each phase and the peak RSS of this process.

    .venv/bin/python bench/file_throughput.py [--size-mib 1024] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sceau.client import DataKey
from sceau.connectors.files import open_file, protect_file
from sceau.core.b64 import b64u_encode
from sceau.core.envelope import token_for
from sceau.core.stream import encrypt_stream


class LocalKeys:
    """A key source that hands out one random data key (the service's role, minus policy)."""

    def __init__(self) -> None:
        self.key = os.urandom(32)
        self.key_id = os.urandom(16)

    def generate_data_key(self, *, user: str | None = None, **options: Any) -> DataKey:
        return DataKey(b64u_encode(self.key_id), self.key, os.urandom(12), token_for(self.key_id))

    def get_data_key(self, key_id: str | None = None, *, token: bytes | None = None,
                     user: str | None = None) -> bytes:
        return self.key


class Null:
    def write(self, data: bytes | memoryview) -> int:
        return len(data)


class Zeros:
    """A reader of ``size`` bytes that allocates nothing."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = min(len(buf), self.left)
        self.left -= n
        return n  # the buffer's previous content is as good as any plaintext here


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Wall-clock and CPU time (user + system) of one phase."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu

    def rate(self, size: int) -> str:
        return (f"{size / self.wall / 1e6:7.0f} MB/s wall ({self.wall:5.2f} s), "
                f"{size / self.cpu / 1e6:7.0f} MB/s per CPU second")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a temp dir; /dev/shm leaves the disk out)")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    keys = LocalKeys()

    with Timer() as stream_only:
        encrypt_stream(Zeros(size), Null(), keys.key, keys.key_id)  # type: ignore[arg-type]

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        src = base / "big.bin"
        block = os.urandom(1 << 20)
        with src.open("wb") as out:
            for _ in range(args.size_mib):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        with Timer() as protect:
            protect_file(keys, src)  # type: ignore[arg-type]
        opened = base / "out"
        opened.mkdir()
        with Timer() as open_:
            open_file(keys, base / "big.bin.sceau", out_dir=opened)  # type: ignore[arg-type]
        assert (opened / "big.bin").stat().st_size == size

    print(f"size          {args.size_mib} MiB")
    print(f"stream only   {stream_only.rate(size)}  (encryption, no file I/O)")
    print(f"file protect  {protect.rate(size)}  (read, encrypt, write, fsync, rename)")
    print(f"file open     {open_.rate(size)}  (read, decrypt, write, fsync, rename)")
    print(f"peak RSS      {peak_rss_mib():7.1f} MiB")


if __name__ == "__main__":
    main()
