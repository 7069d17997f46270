"""The compiled core (jsdissect/native.py, setup.py): mypyc builds the hot modules from the
same sources; they must give the same bytes as the Python sources, and a compiled module
whose source changed must never run."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import setuptools.command.build_ext
from conftest import IN_CI
from setuptools import Distribution, Extension
from setuptools.errors import CompileError

import jsdissect
from jsdissect import native

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(jsdissect.__file__).resolve().parent
CAPTURES = sorted(p for p in (ROOT / "captures").iterdir() if ".pcap" in p.name)


def _require_compiled() -> None:
    state = native.status()
    if state.compiled:
        return
    message = f"the compiled core is not running: {state.reason}"
    if IN_CI:  # .ci/run installs the compiler: the speed a user gets must be what CI tests
        pytest.fail(message)
    pytest.skip(message)


def _python(code: str, pythonpath: Path | None = None, pure: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    if pythonpath is not None:  # and from there: `python -c` looks first in its directory
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=pythonpath,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


WHICH_RUN = (
    "import jsdissect, jsdissect.native as n\n"
    "import jsdissect.tcp, jsdissect.protocol.objserver, jsdissect.protocol.command\n"
    "print(n.status().compiled, [n.running_compiled(__import__(m, fromlist=['_']))"
    " for m in n.COMPILED])"
)


def test_every_hot_module_runs_compiled() -> None:
    _require_compiled()
    state, modules = _python(WHICH_RUN).split(" ", 1)
    assert state == "True"
    assert modules.strip() == str([True] * len(native.COMPILED))


def test_jsdissect_pure_runs_the_python_sources() -> None:
    _require_compiled()
    state, modules = _python(WHICH_RUN, pure=True).split(" ", 1)
    assert state == "False"
    assert modules.strip() == str([False] * len(native.COMPILED))


@pytest.mark.parametrize("edited", ["tcp.py", "protocol/__init__.py"])
def test_a_changed_source_runs_as_python_not_its_stale_compiled_module(
    tmp_path: Path, edited: str
) -> None:
    """An editable install, edited: the compiled modules beside the sources are older than
    them, or than a module they were compiled against (the events' base class). All of
    them give way to the sources (they call each other natively)."""
    _require_compiled()
    copy = tmp_path / "jsdissect"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert _python(WHICH_RUN, tmp_path).startswith("True")
    with (copy / edited).open("a") as source:
        source.write("\n# edited\n")
    state, modules = _python(WHICH_RUN, tmp_path).split(" ", 1)
    assert state == "False"
    assert modules.strip() == str([False] * len(native.COMPILED))
    reason = _python("import jsdissect.native as n; print(n.status().reason)", tmp_path)
    assert "changed since they were compiled" in reason


@pytest.mark.parametrize("missing", ["*.so", "tcp__mypyc.*"])
def test_a_build_record_without_its_compiled_modules_runs_as_python(
    tmp_path: Path, missing: str
) -> None:
    """All the compiled files, or only mypyc's library of one module: Python runs (the
    import of that module would fail otherwise)."""
    _require_compiled()
    copy = tmp_path / "jsdissect"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", missing))
    assert (copy / native.BUILD_RECORD).is_file()
    reason = _python("import jsdissect.native as n; print(n.status())", tmp_path)
    assert "compiled=False" in reason and "compiled modules missing" in reason


# Every row of every table, in a process that runs compiled or the Python sources.
ALL_ROWS = """
import json, sys
import jsdissect
from jsdissect import report
for path in sys.argv[1:]:
    try:
        result = jsdissect.analyze([path])
    except Exception as exc:  # a capture both must refuse alike
        print(json.dumps([path, type(exc).__name__, str(exc)]))
        continue
    rows = {
        "tasks": [report.task_row(t) for t in result.task_records],
        "messages": report.message_rows(result.channels, result.task_records),
        "connections": [report.connection_row(ch) for ch in result.channels],
        "stats": repr(result.stats),
    }
    print(json.dumps([path, rows], default=repr, sort_keys=True))
"""


def _all_rows(captures: list[Path], pure: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    done = subprocess.run(
        [sys.executable, "-c", ALL_ROWS, *map(str, captures)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_compiled_and_python_give_the_same_rows(tmp_path: Path) -> None:
    """Every table on every shipped and crafted capture (malformed frames, gaps, cuts,
    reuse, NAT), compiled against the Python sources. mypyc checks types at run time and
    compiles isinstance its own way: a difference shows here first."""
    _require_compiled()
    import pathological

    crafted = [p for p in pathological.write_all(tmp_path) if p.suffix in (".pcap", ".pcapng")]
    captures = CAPTURES + sorted(crafted)
    compiled, pure = _all_rows(captures, False), _all_rows(captures, True)
    assert len(compiled) == len(captures)
    for ours, theirs in zip(compiled, pure, strict=True):
        assert ours == theirs, ours[:200]


# What a Dask worker sends back for each file (cluster.DaskReader), printed as hex.
DUMP_EXTRACT = """
import pickle
from jsdissect.capture import CaptureStats, Extract, Segment
stats = CaptureStats(1, 2, 3, 4, 5, 6, "python", ["a.pcap: cut short"])
segment = Segment(7, "10.0.0.1", 4455, "10.0.0.2", 40000, 8, 9, 0x18, 10, b"x", 0, None, 11)
print(pickle.dumps(Extract([segment], stats), pickle.HIGHEST_PROTOCOL).hex())
"""
LOAD_EXTRACT = "import pickle; print(repr(pickle.loads(bytes.fromhex({!r}))))"


@pytest.mark.parametrize("pure_worker", [False, True], ids=["compiled-worker", "python-worker"])
def test_a_compiled_and_a_python_process_read_each_others_extracts(pure_worker: bool) -> None:
    """A Dask worker need not run the way the client does (one host without a compiler, an
    edited editable install, JSDISSECT_PURE on one side): what it sends back must read
    the same in a compiled and in a Python process."""
    _require_compiled()
    sent = _python(DUMP_EXTRACT, pure=pure_worker).strip()
    expected = _python(LOAD_EXTRACT.format(sent), pure=pure_worker)
    assert _python(LOAD_EXTRACT.format(sent), pure=not pure_worker) == expected


def _setup_py() -> ModuleType:
    """setup.py as a module: its classes, without a build."""
    spec = importlib.util.spec_from_file_location("jsdissect_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("failing", [(), ("jsdissect.capture__mypyc",)])
def test_a_build_records_its_modules_only_when_it_built_every_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: tuple[str, ...]
) -> None:
    """A module that failed to compile (a compiler killed for memory on the largest one)
    leaves the last build's file where an editable install builds, beside the sources:
    recorded with the new digests, that file, older than its source, would run."""
    names = ("jsdissect.capture", "jsdissect.capture__mypyc", "jsdissect.tcp")
    extensions = [Extension(name, [f"{name}.c"], optional=True) for name in names]
    command = _setup_py().BuildCompiled(Distribution({"ext_modules": extensions}))
    command.build_lib, command.build_temp = str(tmp_path / "lib"), str(tmp_path / "temp")
    command.ensure_finalized()
    for name in names:  # the last build's files
        last = Path(command.get_ext_fullpath(name))
        last.parent.mkdir(parents=True, exist_ok=True)
        last.touch()

    def build_extension(self: object, ext: Extension) -> None:
        if ext.name in failing:
            raise CompileError(f"{ext.name}: cc1 killed")
        Path(command.get_ext_fullpath(ext.name)).touch()

    monkeypatch.setattr(setuptools.command.build_ext.build_ext, "build_extension", build_extension)
    command.run()
    recorded = (tmp_path / "lib" / "jsdissect" / native.BUILD_RECORD).is_file()
    assert recorded == (not failing)


def test_a_build_with_nothing_to_compile_removes_the_last_builds_record(tmp_path: Path) -> None:
    """JSDISSECT_PURE=1 while installing (or no mypyc) compiles nothing: in an editable
    install the last build's modules stay beside the sources, and must not run."""
    dist = Distribution({"ext_modules": [], "cmdclass": _setup_py().CMDCLASS})
    assert "build_ext" in dist.get_command_obj("build").get_sub_commands()
    dist.get_command_obj("build_ext").build_lib = str(tmp_path)
    record = tmp_path / "jsdissect" / native.BUILD_RECORD
    record.parent.mkdir()
    record.write_text("{}")
    dist.run_command("build_ext")
    assert not record.exists()


def test_mypyc_refusing_the_sources_leaves_an_install_that_runs_them_as_python(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """mypyc reports a type error, or an internal error of its own, by exiting: found when
    `x not in (*A, "b")` (ruff's preferred spelling) crashed it and failed the install."""
    import mypyc.build

    def refuses(*args: object, **kwargs: object) -> None:
        raise SystemExit(2)

    monkeypatch.setattr(mypyc.build, "mypycify", refuses)
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    assert _setup_py()._extensions() == []
    assert "not compiled, runs as Python (SystemExit(2))" in capsys.readouterr().err
