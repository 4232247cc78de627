"""Which code of the compiled modules runs: their mypyc extensions or their Python sources.

``scripts/compile.py`` (``make compile``, run by ``make test``) may leave, next to the
sources listed in pyproject.toml's ``[tool.sceau.compiled]``, their mypyc-compiled
extensions, plus ``sceau/_compiled.json``: the SHA-256 of each source at build time.
Python's import system prefers an extension to a source, so this module, imported by
``sceau/__init__`` before any other part of Sceau, decides once per process:

- ``SCEAU_PURE_PYTHON=1`` in the environment: the sources run (:data:`MODE` ``pure``);
- a compiled module's source differs from the one that was built (edited since, or the
  manifest is missing or unreadable): the sources run, with a :class:`StaleBuildWarning`;
  the compiled modules call each other inside one shared library, so it is all or none;
- otherwise the extensions run (``compiled``), or there are none (``pure``).

Running the sources means putting a finder first on ``sys.meta_path`` that loads any
``sceau`` module from its ``.py`` file when there is one. Nothing is compiled or written.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["MODE", "REASON", "StaleBuildWarning", "compiled_modules"]

_PACKAGE = Path(__file__).resolve().parent
_MANIFEST = _PACKAGE / "_compiled.json"


class StaleBuildWarning(RuntimeWarning):
    """The compiled modules are older than their sources: the sources run instead."""


class _SourceFinder:
    """Finds every ``sceau`` submodule that has a ``.py`` file as that file."""

    @classmethod
    def find_spec(
        cls, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("sceau.") or path is None:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, leaf + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def _built() -> dict[str, str] | None:
    """module -> source SHA-256 of the last build, or None when there is no build."""
    if not _MANIFEST.exists():
        # A leftover extension without its manifest is a build of unknown age.
        return {} if any(_PACKAGE.rglob("*.so")) else None
    try:
        modules = json.loads(_MANIFEST.read_text(encoding="utf-8"))["modules"]
        return {name: str(entry["sha256"]) for name, entry in modules.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _stale(built: dict[str, str]) -> str | None:
    """Why the build cannot be trusted to match the sources, or None."""
    if not built:
        return "compiled extensions without a readable manifest (sceau/_compiled.json)"
    for name, sha256 in sorted(built.items()):
        source = _PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
        try:
            current = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError:
            return f"{name}: source unreadable"
        if current != sha256:
            return f"{name}: source changed since it was compiled"
    return None


def _decide() -> tuple[str, str]:
    built = _built()
    if os.environ.get("SCEAU_PURE_PYTHON", "") not in ("", "0"):
        if built is not None:
            sys.meta_path.insert(0, _SourceFinder)
        return "pure", "SCEAU_PURE_PYTHON is set"
    if built is None:
        return "pure", "no compiled modules (make compile builds them)"
    problem = _stale(built)
    if problem is not None:
        sys.meta_path.insert(0, _SourceFinder)
        warnings.warn(
            f"sceau: running pure Python: {problem}; run `make compile`",
            StaleBuildWarning,
            stacklevel=2,
        )
        return "pure", problem
    return "compiled", f"{len(built)} module(s) compiled with mypyc"


#: ``compiled`` when the extensions of the listed modules run, else ``pure``.
MODE, REASON = _decide()


def compiled_modules() -> tuple[str, ...]:
    """The modules the current build compiled (empty when :data:`MODE` is ``pure``)."""
    if MODE != "compiled":
        return ()
    return tuple(sorted(_built() or {}))
