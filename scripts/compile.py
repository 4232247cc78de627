"""Compile the modules of ``[tool.sceau.compiled]`` (pyproject.toml) with mypyc, in place.

``make compile`` (and so ``make test``) runs this. The compiled extension of each module
is written next to its source (``src/sceau/core/audit.cpython-311-....so``), where Python's
import system prefers it to the ``.py``; the group's shared runtime goes to
``src/sceau/_compiled__mypyc...so``. Nothing else changes: ``pip install -e .`` never
needs a compiler, and without the built files Sceau is the same pure Python.

- No C compiler, or no mypyc: prints why, removes any earlier build (so stale compiled
  code can never shadow newer sources) and exits 0; ``--require`` makes that exit 1.
- Up to date: ``src/sceau/_compiled.json`` records the SHA-256 of every compiled source,
  the module list and the Python and mypy versions; a rebuild happens only when one of
  them changed. ``sceau`` reads the same manifest at import (``sceau._native``): if a
  source changed since the build, it runs every module as pure Python and says so.
- ``--clean`` removes the built files and the manifest.

Usage: ``python scripts/compile.py [--require | --clean]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
PACKAGE = SRC / "sceau"
MANIFEST = PACKAGE / "_compiled.json"
BUILD_DIR = REPO / "build" / "mypyc"
# The shared library of the group (mypyc's runtime and every compiled module's code);
# named inside the package so that it travels with it.
GROUP = "sceau._compiled"
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def say(message: str) -> None:
    print(f"compile: {message}", flush=True)


def listed_modules() -> list[str]:
    """The one list of compiled modules: ``[tool.sceau.compiled] modules``."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        config = tomllib.load(handle)
    modules = config["tool"]["sceau"]["compiled"]["modules"]
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise SystemExit("compile: [tool.sceau.compiled] modules must be a list of names")
    for name in modules:
        if not name.startswith("sceau.") or not source_of(name).is_file():
            raise SystemExit(f"compile: no source for listed module {name}")
    return sorted(modules)


def source_of(module: str) -> Path:
    return SRC.joinpath(*module.split(".")).with_suffix(".py")


def built_files() -> list[Path]:
    """Every file a build leaves in the source tree (extensions of any Python version)."""
    return sorted(p for p in PACKAGE.rglob("*.so") if p.is_file()) + (
        [MANIFEST] if MANIFEST.exists() else []
    )


def clean() -> None:
    removed = built_files()
    for path in removed:
        path.unlink()
    shutil.rmtree(BUILD_DIR, ignore_errors=True)
    if removed:
        say(f"removed {len(removed)} built file(s)")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wanted_manifest(modules: list[str]) -> dict[str, object]:
    import mypy.version  # only reached when mypyc is importable

    return {
        "python": sys.version.split()[0],
        "ext_suffix": EXT_SUFFIX,
        "mypy": mypy.version.__version__,
        "modules": {
            m: {"source": str(source_of(m).relative_to(SRC)), "sha256": digest(source_of(m))}
            for m in modules
        },
    }


def up_to_date(wanted: dict[str, object], modules: list[str]) -> bool:
    try:
        current = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return False
    shims = [source_of(m).with_name(m.rsplit(".", 1)[1] + EXT_SUFFIX) for m in modules]
    return current == wanted and all(p.is_file() for p in shims)


def compiler_problem() -> str | None:
    """Why nothing can be compiled here, or None."""
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed (pip install mypy)"
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc!r} not found)"
    if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        return "no Python headers (Python.h) for this interpreter"
    return None


def build(modules: list[str]) -> None:
    """Run mypyc and the C compiler in a child process (setuptools' setup() exits on error)."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    paths = [str(source_of(m).relative_to(REPO)) for m in modules]
    child = (
        "import sys\n"
        "from setuptools import setup\n"
        "from mypyc.build import mypycify\n"
        "paths = sys.argv[1:]\n"
        f"ext = mypycify(paths, opt_level='3', target_dir={str(BUILD_DIR)!r},"
        f" group_name={GROUP!r})\n"
        "setup(name='sceau-compiled', ext_modules=ext, package_dir={'': 'src'},"
        " script_args=['-q', 'build_ext', '--inplace',"
        f" '--build-temp', {str(BUILD_DIR / 'temp')!r}])\n"
    )
    env = dict(os.environ, MYPYPATH=str(SRC), PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-c", child, *paths], cwd=REPO, env=env, check=False
    )
    if result.returncode != 0:
        clean()
        raise SystemExit(f"compile: mypyc build failed (exit {result.returncode})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require", action="store_true", help="fail when nothing can compile")
    parser.add_argument("--clean", action="store_true", help="remove the built files")
    args = parser.parse_args()
    if args.clean:
        clean()
        return 0
    modules = listed_modules()
    problem = compiler_problem()
    if problem is not None:
        clean()
        say(f"skipped: {problem}; Sceau runs as pure Python")
        return 1 if args.require else 0
    wanted = wanted_manifest(modules)
    if up_to_date(wanted, modules):
        say(f"{len(modules)} compiled module(s) up to date")
        return 0
    clean()
    say(f"compiling {len(modules)} module(s) with mypyc: {', '.join(modules)}")
    build(modules)
    MANIFEST.write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
