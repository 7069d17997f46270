"""Compiles jsdissect's hot modules with mypyc where a C compiler is there (issue 8).

Everything else about the package is in pyproject.toml. The modules compiled, and the
record that tells jsdissect at run time that the compiled ones match their sources, are
defined in jsdissect/native.py. Without a compiler (or with JSDISSECT_PURE=1 at install
time) the install succeeds and jsdissect runs the same modules as Python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import ClassVar

from setuptools import Extension, setup
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _native():  # jsdissect/native.py alone: the package's dependencies are not here yet
    spec = importlib.util.spec_from_file_location("_jsdissect_native", ROOT / "jsdissect/native.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native = _native()


class BuildCompiled(build_ext):
    """build_ext that keeps going without a compiler, and records what it compiled."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:  # one C file per module: compile them side by side
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        # An editable install builds beside the sources: an older build's record goes first.
        record = Path(self.get_ext_fullpath("jsdissect.native")).parent / native.BUILD_RECORD
        record.unlink(missing_ok=True)
        digests = native.source_digests(ROOT / "jsdissect")  # as compiled
        self._built: set[str] = set()
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers: the Python sources will run
            print(f"jsdissect: not compiled, runs as Python ({exc})", file=sys.stderr)
            return
        if self.extensions and {e.name for e in self.extensions} <= self._built:
            record.write_text(json.dumps(digests, indent=1) + "\n")
        # else optional extensions failed: nothing is recorded, so nothing compiled is used

    def build_extension(self, ext: Extension) -> None:
        # Raises when this one fails (an optional one is then skipped), and returns when
        # it is built or up to date. Whether its file is there says nothing: an editable
        # install builds beside the sources, where the last build's file stays.
        super().build_extension(ext)
        self._built.add(ext.name)


def _always(command: build) -> bool:
    return True


class Build(build):
    """build that runs build_ext with nothing to compile too (JSDISSECT_PURE=1 while
    installing, no mypyc): it removes the last build's record, or an editable install
    would go on running the modules that build compiled beside the sources."""

    sub_commands: ClassVar[list] = [
        (name, _always if name == "build_ext" else predicate)
        for name, predicate in build.sub_commands
    ]


def _extensions() -> list:
    if os.environ.get(native.PURE_ENV, "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    sources = [str(native.source_path(m, Path("jsdissect"))) for m in native.COMPILED]
    try:
        extensions = mypycify(
            # No cache: a stale one would skip a change to this file's options.
            ["--ignore-missing-imports", "--cache-dir=/dev/null", *sources],
            opt_level="3",
            # Each module on its own. Compiled together, mypyc checks isinstance(x, C) for a
            # class C it keeps a Python class (our events: `record` is no decorator it knows)
            # as `type(x) is C`, as if C had no subclasses (mypy 2.4): an Ok was no Answer.
            # Compiled separately it tracks no class's subclasses, and checks them all.
            separate=True,
        )
    # mypyc refused: run as Python rather than fail the install. It reports a type error,
    # and its own internal errors, by exiting (SystemExit), not by raising an Exception.
    except (Exception, SystemExit) as exc:
        print(f"jsdissect: not compiled, runs as Python ({exc!r})", file=sys.stderr)
        return []
    for extension in extensions:
        extension.optional = True
    return extensions


CMDCLASS = {"build": Build, "build_ext": BuildCompiled}

# pip runs this file as __main__; tests import it for its commands, without building.
if __name__ == "__main__":
    setup(ext_modules=_extensions(), cmdclass=CMDCLASS)
