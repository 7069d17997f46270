"""The compiled core: the hot modules, compiled by mypyc from these same sources.

`pip install` compiles the modules of `COMPILED` when a C compiler and the Python headers
are there (setup.py), else jsdissect runs them as Python: the results are the same, the
compiled ones take a quarter less CPU on a dense capture (issue 8). Which one runs is decided
here, once, before any of them is imported:

- `JSDISSECT_PURE=1` in the environment runs the Python sources (to compare, or debug);
- a compiled module whose source changed since it was built (an editable install, edited)
  would run old code: then the Python sources of all of them run, as if none were built
  (they call each other natively, so it is all or none), and `status()` says why.

setup.py reads `COMPILED` and `BUILD_RECORD` from this file without importing jsdissect:
keep this module free of imports from the package.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

# Where the time of a dense capture goes: reading, reassembly, both decoders, matching.
COMPILED = (
    "jsdissect.capture",
    "jsdissect.tcp",
    "jsdissect.correlate",
    "jsdissect.ports",
    "jsdissect.protocol.command",
    "jsdissect.protocol.objserver",
)
# Modules the compiled ones use that stay Python: mypyc compiled against their types (and
# checks them at run time), so an edit there makes the compiled modules stale too.
COMPILED_AGAINST = ("compressed.py", "errors.py", "protocol/__init__.py", "report.py")
# Written by the build beside the compiled modules: source_digests() as they were built.
BUILD_RECORD = "_native_build.json"
PURE_ENV = "JSDISSECT_PURE"

_PACKAGE_DIR = Path(__file__).resolve().parent


class Status(NamedTuple):
    compiled: bool
    reason: str  # why the Python sources run, or "" when compiled


def source_path(module: str, package_dir: Path = _PACKAGE_DIR) -> Path:
    """The .py file of a module of the package (not of a package: its __init__)."""
    return package_dir.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_digests(package_dir: Path) -> dict[str, str]:
    """SHA-256 of each source the compiled modules were built from or type-checked against,
    by path in the package."""
    paths = [source_path(m, package_dir) for m in COMPILED]
    paths += [package_dir / name for name in COMPILED_AGAINST]
    return {
        str(path.relative_to(package_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in paths
    }


def _decide() -> Status:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return Status(False, f"{PURE_ENV} is set")
    try:
        built = json.loads((_PACKAGE_DIR / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return Status(
            False,
            "not compiled at install time (no C compiler or Python headers, a module that"
            " failed to compile, or JSDISSECT_PURE=1 then)",
        )
    if not all(_compiled_file(m) for m in COMPILED):
        return Status(False, "compiled modules missing: pip install again")
    try:
        if built != source_digests(_PACKAGE_DIR):
            return Status(False, "sources changed since they were compiled: pip install again")
    except OSError:  # an installed wheel need not ship the sources: use what was built
        pass
    return Status(True, "")


def _compiled_file(module: str) -> bool:
    """The module's extension and mypyc's library beside it (compiled one by one, setup.py)
    are both there."""
    stem = source_path(module).with_suffix("")
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return all(
        any(stem.with_name(name + suffix).is_file() for suffix in suffixes)
        for name in (stem.name, stem.name + "__mypyc")
    )


class _SourceFirst:
    """A meta path finder that gives a module of the package from its .py file, where the
    default finder would take a compiled module beside it: every module when the compiled
    ones may not run, else those not in COMPILED (one left from an older build)."""

    def __init__(self, compiled: bool) -> None:
        self.compiled = compiled

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith("jsdissect.") or (self.compiled and name in COMPILED):
            return None
        source = source_path(name)
        if not source.is_file():  # a package, or mypyc's runtime library beside a module
            return None
        loader = importlib.machinery.SourceFileLoader(name, str(source))
        return importlib.util.spec_from_file_location(name, source, loader=loader)


_status: Status | None = None


def install() -> Status:
    """Decide once which modules run; called by jsdissect/__init__.py."""
    global _status
    if _status is None:
        _status = _decide()
        sys.meta_path.insert(0, _SourceFirst(_status.compiled))
    return _status


def status() -> Status:
    return install()


def running_compiled(module: ModuleType) -> bool:
    """Whether a module was loaded from a compiled extension."""
    return not str(getattr(module, "__file__", "")).endswith(".py")
