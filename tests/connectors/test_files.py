"""File connector end to end: the SDK stream methods and `sceau file` against a real server."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from connectors_support import invoke

from sceau.client import DataKey
from sceau.connectors.files import (
    FileInfo,
    decode_file_header,
    encode_file_header,
    open_file,
    protect_file,
)
from sceau.core.b64 import b64u_encode
from sceau.core.envelope import EnvelopeFormatError, token_for
from sceau.errors import AccessDenied, InvalidRequest
from sceau.vocab import Reason
from support import Server, TestApp, run_cli

OWNER = "alice@example.com"
RECIPIENT = "bob@example.com"
STRANGER = "mallory@example.org"


@pytest.fixture(scope="module")
def profiles(server: Server, app: TestApp,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("profiles")
    return {user: server.profile(app, base / f"{user}.json", user)
            for user in (OWNER, RECIPIENT, STRANGER)}


def sceau_file(*args: str, profile: Path, check: bool = False):  # noqa: ANN201
    return invoke("file", *args, "--profile", str(profile), check=check)


def key_of(stdout: bytes) -> str:
    return stdout.decode().strip().rsplit(" ", 1)[-1]


def listing(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


# --- SDK ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 16, 17, 48, 1000])
def test_sdk_stream_round_trip(server: Server, app: TestApp, size: int) -> None:
    data = os.urandom(size)
    sealed = io.BytesIO()
    with server.client(app, OWNER) as c:
        key_id = c.protect_stream(io.BytesIO(data), sealed, segment_size=16, name="blob",
                                  recipients=[RECIPIENT])
        assert c.describe_key(key_id)["name"] == "blob"
    envelope = sealed.getvalue()
    segments = max(1, -(-size // 16))
    assert len(envelope) == 41 + size + 16 * segments and envelope[4] == 2
    for user in (OWNER, RECIPIENT):
        out = io.BytesIO()
        with server.client(app, user) as c:
            assert c.open_stream(io.BytesIO(envelope), out) == key_id
        assert out.getvalue() == data
    with server.client(app, STRANGER) as c, pytest.raises(AccessDenied) as denied:
        c.open_stream(io.BytesIO(envelope), io.BytesIO())
    assert denied.value.reason == Reason.NOT_AUTHORIZED


FOREIGN = [b"", b"SCU", b"PK\x03\x04" + bytes(60), b"SCU\x01\x01" + bytes(60)]


@pytest.mark.parametrize("foreign", FOREIGN)
def test_sdk_open_stream_refuses_foreign_before_any_call(server: Server, app: TestApp,
                                                         foreign: bytes) -> None:
    with server.client(app, OWNER) as c, pytest.raises(EnvelopeFormatError):
        c.open_stream(io.BytesIO(foreign), io.BytesIO())


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "x\x00y", "é" * 200])
def test_inner_header_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        FileInfo(name=name, size=0, mtime=None)


def test_inner_header_round_trip() -> None:
    info = FileInfo(name="rapport été.pdf", size=12345, mtime=1700000000)
    encoded = encode_file_header(info)
    assert encoded[:4] == b"SCF\x01" and int.from_bytes(encoded[4:8], "big") == len(encoded) - 8
    assert decode_file_header(encoded[8:]) == info


# --- CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 10, 65536 * 2, 65536 * 3 + 5])
def test_cli_round_trip(tmp_path: Path, profiles: dict[str, Path], size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "secret plan.bin"
    src.write_bytes(data)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    proc = sceau_file("protect", str(src), profile=profiles[OWNER], check=True)
    sealed = tmp_path / "secret plan.bin.sceau"
    assert not src.exists() and sealed.exists()  # original removed without --keep
    assert b"secret plan" not in sealed.read_bytes()
    assert not data or data not in sealed.read_bytes()
    assert str(sealed) in proc.stdout.decode()
    renamed = tmp_path / "opaque.sceau"  # the name comes from inside, not from the file name
    sealed.rename(renamed)
    out = tmp_path / "out"
    out.mkdir()
    sceau_file("open", str(renamed), "-o", str(out), profile=profiles[OWNER], check=True)
    restored = out / "secret plan.bin"
    assert restored.read_bytes() == data
    assert int(restored.stat().st_mtime) == 1_600_000_000
    assert listing(out) == {"secret plan.bin"}


def test_cli_recipient_opens_stranger_refused(tmp_path: Path, profiles: dict[str, Path]) -> None:
    src = tmp_path / "memo.txt"
    src.write_bytes(b"for bob only")
    sceau_file("protect", str(src), "--to", RECIPIENT, "--keep", profile=profiles[OWNER],
               check=True)
    for user, where in ((RECIPIENT, "bob"), (STRANGER, "mallory")):
        (tmp_path / where).mkdir()
    ok = sceau_file("open", str(tmp_path / "memo.txt.sceau"), "-o", str(tmp_path / "bob"),
                    profile=profiles[RECIPIENT])
    assert ok.returncode == 0 and (tmp_path / "bob" / "memo.txt").read_bytes() == b"for bob only"
    bad = sceau_file("open", str(tmp_path / "memo.txt.sceau"), "-o", str(tmp_path / "mallory"),
                     profile=profiles[STRANGER])
    assert bad.returncode == 1
    assert bad.stderr.decode() == (
        f"sceau: error: {tmp_path / 'memo.txt.sceau'}: access denied (not_authorized)\n"
    )
    assert listing(tmp_path / "mallory") == set()


def _corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :]


BAD_INPUTS = {
    "corrupted": (_corrupt, "corrupted or truncated"),
    "truncated": (lambda d: d[:-10], "corrupted or truncated"),
    "last segment dropped": (lambda d: d[: 41 + 65536 + 16], "corrupted or truncated"),
    "trailing bytes": (lambda d: d + b"\x00", "corrupted or truncated"),
    "header only": (lambda d: d[:41], "corrupted or truncated"),
    "cut in header": (lambda d: d[:30], "not a .sceau file or truncated"),
    "foreign": (lambda d: b"%PDF-1.7\n" + d[9:], "not a .sceau file or truncated"),
    "empty": (lambda d: b"", "not a .sceau file or truncated"),
}


def test_cli_bad_inputs_one_line_each_nothing_written(tmp_path: Path,
                                                      profiles: dict[str, Path]) -> None:
    src = tmp_path / "sample.bin"
    src.write_bytes(os.urandom(65536 + 100))
    sceau_file("protect", str(src), profile=profiles[OWNER], check=True)
    good = tmp_path / "sample.bin.sceau"
    sample = good.read_bytes()
    bad = {case: tmp_path / f"{case}.sceau" for case in sorted(BAD_INPUTS)}
    for case, path in bad.items():
        path.write_bytes(BAD_INPUTS[case][0](sample))
    out = tmp_path / "out"
    out.mkdir()
    # The real console script: bad files each fail with one line, the good one is opened.
    proc = run_cli("file", "open", *map(str, bad.values()), str(good), "-o", str(out),
                   "--profile", str(profiles[OWNER]), check=False)
    assert proc.returncode == 1
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == len(bad)
    for line, (case, path) in zip(lines, bad.items(), strict=True):
        assert line.startswith(f"sceau: error: {path}: {BAD_INPUTS[case][1]}"), line
    assert listing(out) == {"sample.bin"}
    assert (out / "sample.bin").stat().st_mode & 0o777 == 0o600


def test_cli_not_made_by_file_protect(server: Server, app: TestApp, tmp_path: Path,
                                      profiles: dict[str, Path]) -> None:
    raw = tmp_path / "raw.sceau"
    with server.client(app, OWNER) as c, raw.open("wb") as out:
        c.protect_stream(io.BytesIO(b"no inner header"), out)
    proc = sceau_file("open", str(raw), profile=profiles[OWNER])
    assert proc.returncode == 1 and "no file header inside" in proc.stderr.decode()
    assert listing(tmp_path) == {"raw.sceau"}


@pytest.mark.parametrize("change", ["disable", "destroy"])
def test_cli_disabled_or_destroyed_key(server: Server, app: TestApp, tmp_path: Path,
                                       profiles: dict[str, Path], change: str) -> None:
    src = tmp_path / "doc.txt"
    src.write_bytes(b"soon unreadable")
    key_id = key_of(sceau_file("protect", str(src), profile=profiles[OWNER], check=True).stdout)
    with server.client(app, OWNER) as c:
        c.disable_key(key_id) if change == "disable" else c.destroy_key(key_id)
    proc = sceau_file("open", str(tmp_path / "doc.txt.sceau"), profile=profiles[OWNER])
    reason = "key_disabled" if change == "disable" else "key_destroyed"
    assert proc.returncode == 1
    assert proc.stderr.decode() == (
        f"sceau: error: {tmp_path / 'doc.txt.sceau'}: access denied ({reason})\n"
    )
    assert listing(tmp_path) == {"doc.txt.sceau"}


def test_cli_force_and_keep(tmp_path: Path, profiles: dict[str, Path]) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"version 1")
    owner = profiles[OWNER]
    sceau_file("protect", str(src), "--keep", profile=owner, check=True)
    assert src.exists()
    first = (tmp_path / "a.txt.sceau").read_bytes()
    refused = sceau_file("protect", str(src), "--keep", profile=owner)
    assert refused.returncode == 1 and "exists (use --force" in refused.stderr.decode()
    assert (tmp_path / "a.txt.sceau").read_bytes() == first
    src.write_bytes(b"version 2")
    sceau_file("protect", str(src), "--force", profile=owner, check=True)
    assert not src.exists() and (tmp_path / "a.txt.sceau").read_bytes() != first
    (tmp_path / "a.txt").write_bytes(b"local edit")
    refused = sceau_file("open", str(tmp_path / "a.txt.sceau"), profile=owner)
    assert refused.returncode == 1 and (tmp_path / "a.txt").read_bytes() == b"local edit"
    sceau_file("open", str(tmp_path / "a.txt.sceau"), "--force", profile=owner, check=True)
    assert (tmp_path / "a.txt").read_bytes() == b"version 2"
    assert listing(tmp_path) == {"a.txt", "a.txt.sceau"}  # no temporary files left


def test_cli_recursive_and_partial_failure(tmp_path: Path, profiles: dict[str, Path]) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    for rel in ("one.txt", "sub/two.txt", "sub/deeper/three.bin"):
        (tree / rel).write_bytes(rel.encode())
    (tree / "old.sceau").write_bytes(b"already protected: skipped")
    no_r = sceau_file("protect", str(tree), profile=profiles[OWNER])
    assert no_r.returncode == 1 and "is a directory (use --recursive)" in no_r.stderr.decode()
    proc = sceau_file("protect", "-r", str(tree), str(tmp_path / "missing.txt"),
                      profile=profiles[OWNER])
    assert proc.returncode == 1  # one argument failed, the others were done
    assert proc.stderr.decode().splitlines() == [
        f"sceau: error: {tmp_path / 'missing.txt'}: No such file or directory"
    ]
    assert listing(tree) == {"old.sceau", "sub", "sub/deeper", "one.txt.sceau",
                             "sub/two.txt.sceau", "sub/deeper/three.bin.sceau"}
    sealed = sorted(str(p) for p in tree.rglob("*.txt.sceau"))
    sceau_file("open", *sealed, profile=profiles[OWNER], check=True)
    assert (tree / "sub" / "two.txt").read_bytes() == b"sub/two.txt"


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = run_cli("file", "protect", str(tmp_path), "--profile", str(tmp_path / "nope.json"),
                   check=False)
    assert proc.returncode == 2
    proc = invoke("file", "open")
    assert proc.returncode == 2


class LocalKeys:
    """A key source without a service, for what does not need one (interruption)."""

    key, key_id = os.urandom(32), os.urandom(16)

    def generate_data_key(self, *, user: str | None = None, **options: object) -> DataKey:
        return DataKey(b64u_encode(self.key_id), self.key, os.urandom(12), token_for(self.key_id))

    def get_data_key(self, key_id: str | None = None, *, token: bytes | None = None,
                     user: str | None = None) -> bytes:
        return self.key


@pytest.mark.parametrize("step", ["protect", "open"])
def test_interruption_leaves_no_output(tmp_path: Path, step: str) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))
    keys = LocalKeys()

    def interrupt(done: int) -> None:
        if done > 1 << 20:
            raise KeyboardInterrupt

    if step == "open":
        protect_file(keys, src)
        (tmp_path / "out").mkdir()
    before = listing(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        if step == "protect":
            protect_file(keys, src, progress=interrupt)
        else:
            open_file(keys, tmp_path / "big.bin.sceau", out_dir=tmp_path / "out",
                      progress=interrupt)
    assert listing(tmp_path) == before  # no temporary file, no output, original kept
