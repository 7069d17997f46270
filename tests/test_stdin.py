"""Captures through a pipe: `-` (stdin) and named pipes are saved to a temporary file,
then read like a file; everything else about them is refused in one line."""

from __future__ import annotations

import gzip
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require, require_root
from conversations import command_chain
from pcapfiles import pcap_file
from zstandard import ZstdCompressor

import jsdissect

ROOT = Path(__file__).resolve().parent.parent
SHELL = ROOT / "captures" / "one_shell.pcap"  # one task, 52 packets
DEMO = ROOT / "captures" / "demo.pcap"  # ten tasks
JSDISSECT = [sys.executable, "-m", "jsdissect"]


def run(*args: str, stdin: object = None, data: bytes | None = None, tmpdir: Path | None = None):
    """jsdissect with `data` (a pipe) or `stdin` on its standard input; its temporary files
    in `tmpdir`. Returns (status, stdout, stderr) as text."""
    env = dict(os.environ)
    if tmpdir is not None:
        tmpdir.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    done = subprocess.run(
        [*JSDISSECT, *args], input=data, stdin=stdin, capture_output=True, timeout=300, env=env
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    return line


# --- read like the file ----------------------------------------------------------------------


@pytest.mark.parametrize("compress", [bytes, gzip.compress, ZstdCompressor().compress])
def test_stdin_gives_the_table_of_the_file_and_leaves_no_copy(
    tmp_path: Path, compress: Callable[[bytes], bytes]
) -> None:
    fed = compress(DEMO.read_bytes())
    status, out, err = run("tasks", "-", "--csv", "-", data=fed, tmpdir=tmp_path / "tmp")
    assert status == 0, err
    assert out == run("tasks", str(DEMO), "--csv", "-")[1]
    assert len(out.splitlines()) == 1 + 10
    assert not list((tmp_path / "tmp").iterdir())  # the saved copy is gone


def test_stdin_is_read_again_for_the_ports_commands_announce(tmp_path: Path) -> None:
    # Each read of this chain finds commands on ports the filter of the read before left
    # out: a pipe can be read once, so the copy is what is read again.
    path = command_chain(tmp_path / "chain.pcap", 4)
    _, direct, direct_err = run("connections", str(path), "--csv", "-")
    status, out, err = run("connections", "-", "--csv", "-", data=path.read_bytes())
    assert status == 0, err
    assert out == direct and len(out.splitlines()) == 1 + 4  # all of it, not the first read
    assert err.replace("<stdin>", str(path)) == direct_err


def test_stdin_with_ring_buffer_files_is_one_timeline(tmp_path: Path) -> None:
    editcap = require("editcap")
    subprocess.run([editcap, "-c", "300", str(DEMO), str(tmp_path / "ring.pcap")], check=True)
    first, *rest = sorted(tmp_path.glob("ring*.pcap"))
    status, out, err = run("tasks", "-", *map(str, rest), "--csv", "-", data=first.read_bytes())
    assert status == 0, err
    assert out == run("tasks", str(DEMO), "--csv", "-")[1]


def test_a_named_pipe_is_read_like_the_file(tmp_path: Path) -> None:
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    # A daemon: if jsdissect never opened the pipe, the writer waits forever, not pytest.
    writer = threading.Thread(target=lambda: fifo.write_bytes(DEMO.read_bytes()), daemon=True)
    writer.start()
    status, out, err = run("tasks", str(fifo), "--csv", "-")
    assert status == 0, err
    assert out == run("tasks", str(DEMO), "--csv", "-")[1]


def test_an_iterator_of_paths_is_analysed_whole() -> None:
    # Found in review: the check for stdin given twice used up an iterator of paths.
    result = jsdissect.analyze(iter([DEMO]))
    assert len(result.task_records) == 10 and result.paths == (str(DEMO),)


# --- streams that end early keep what came before --------------------------------------------


def test_stdin_cut_short_is_read_up_to_the_cut_and_named(tmp_path: Path) -> None:
    status, _out, err = run("tasks", "-", "--engine", "python", data=SHELL.read_bytes()[:-10])
    assert status == 0, err
    assert err.startswith("jsdissect: warning: <stdin>: cut short after packet 51 (")


@pytest.mark.parametrize("engine", ["auto", "wireshark"])
def test_a_stream_that_breaks_off_keeps_what_came_before(tmp_path: Path, engine: str) -> None:
    # Found in review: a read error (a connection reset) threw the whole stream away; and
    # the wireshark engine kept what came before without saying the stream broke off.
    if engine == "wireshark":
        require("tshark")
    part = DEMO.read_bytes()[:40_000]
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    with listener, sender, receiver:
        proc = subprocess.Popen(
            [*JSDISSECT, "tasks", "-", "--csv", "-", "--engine", engine],
            stdin=receiver,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        sender.sendall(part)
        time.sleep(1)  # read by jsdissect; then a reset instead of a close
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sender.close()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert b"jsdissect: warning: <stdin>: the stream broke off (" in err
    assert out.decode() == run("tasks", "-", "--csv", "-", "--engine", engine, data=part)[1]


# --- refused in one line, at once, leaving nothing behind ------------------------------------


@pytest.mark.parametrize(
    ("args", "data", "says"),
    [
        (["-"], b"", "<stdin>: empty file"),
        (["-"], b"not a capture\n", "<stdin>: not a pcap or pcapng file"),
        (["-", "-"], b"", "<stdin>: given more than once"),
        (["-", "/dev/stdin"], b"", "/dev/stdin: given more than once"),
    ],
    ids=["empty", "text", "twice", "twice by another name"],
)
def test_bad_stdin_is_one_line_and_status_2(
    tmp_path: Path, args: list[str], data: bytes, says: str
) -> None:
    status, _out, err = run("tasks", *args, data=data, tmpdir=tmp_path / "tmp")
    assert status == 2 and one_line(err).startswith(f"jsdissect: {says}"), err
    assert not list((tmp_path / "tmp").iterdir())


def gzip_unfinished(data: bytes) -> bytes:
    """The start of a gzip stream still being written (`tcpdump | gzip`): flushed, not ended."""
    packer = zlib.compressobj(wbits=31)
    return packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize(
    ("encode", "says"),
    [(bytes, "not a pcap or pcapng file"), (gzip_unfinished, "gzip-compressed file is not a")],
    ids=["plain", "gzip"],
)
def test_a_stream_that_is_no_capture_is_refused_before_its_end(
    tmp_path: Path, encode: Callable[[bytes], bytes], says: str
) -> None:
    # Found in review: `tcpdump -i eth0 | jsdissect tasks -` (no `-w -`) was saved to a
    # temporary file until the disk was full, before its first bytes were looked at.
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = {**os.environ, "TMPDIR": str(spool)}
    proc = subprocess.Popen(
        [*JSDISSECT, "tasks", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(encode(b"15:22:01.123 IP a.b > c.d: Flags [P.], length 10\n" * 2000))
        proc.stdin.flush()  # and the stream stays open
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.stdin.close()
    line = one_line(proc.stderr.read().decode())
    assert status == 2 and line.startswith(f"jsdissect: <stdin>: {says}"), line
    assert not list(spool.iterdir())


def test_the_same_named_pipe_twice_is_refused_without_waiting(tmp_path: Path) -> None:
    # Found in review: it waited forever for a second writer.
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    status, _out, err = run("tasks", str(fifo), str(tmp_path / "." / "f"))
    assert status == 2 and "given more than once" in one_line(err)


def test_stdin_from_a_terminal_or_a_device_is_refused_at_once() -> None:
    # Either would otherwise be read "to the end": forever, or until the disk is full.
    leader, terminal = pty.openpty()
    try:
        status, _out, err = run("tasks", "-", stdin=terminal)
    finally:
        os.close(leader)
        os.close(terminal)
    assert status == 2 and "<stdin>: is a terminal" in one_line(err)
    with open("/dev/zero", "rb") as zero:
        status, _out, err = run("tasks", "-", stdin=zero)
    assert status == 2 and "<stdin>: a device, not a capture" in one_line(err)


def test_a_missing_file_beside_stdin_fails_before_stdin_ends(tmp_path: Path) -> None:
    # Found in review: a typo was reported only after the whole stream had been saved.
    proc = subprocess.Popen(
        [*JSDISSECT, "tasks", str(tmp_path / "typo.pcap"), "-"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(SHELL.read_bytes())  # and the stream stays open
        proc.stdin.flush()
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.stdin.close()
    assert status == 2 and "typo.pcap: no such file" in one_line(proc.stderr.read().decode())


def test_output_over_the_file_behind_stdin_is_refused(tmp_path: Path) -> None:
    # Found in review: `jsdissect tasks - --csv x.pcap < x.pcap` replaced the capture.
    victim = tmp_path / "victim.pcap"
    victim.write_bytes(SHELL.read_bytes())
    with victim.open("rb") as stdin:
        status, _out, err = run("tasks", "-", "--csv", str(victim), stdin=stdin)
    assert status == 2 and "is one of the input captures" in one_line(err)
    assert victim.read_bytes() == SHELL.read_bytes()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_kill_while_saving_stdin_removes_the_copy(tmp_path: Path, signum: int) -> None:
    # Found in review: the copy stayed behind (an ssh session closed sends SIGHUP).
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = {**os.environ, "TMPDIR": str(spool)}
    proc = subprocess.Popen(
        [*JSDISSECT, "tasks", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None
    proc.stdin.write(DEMO.read_bytes()[:30_000])
    proc.stdin.flush()
    while not list(spool.iterdir()) and proc.poll() is None:
        time.sleep(0.05)  # until the copy exists
    proc.send_signal(signum)
    proc.wait(timeout=120)
    proc.stdin.close()
    assert proc.returncode == 128 + signum
    assert not list(spool.iterdir())
    assert b"Traceback" not in proc.stderr.read()


# --- a full $TMPDIR ----------------------------------------------------------------------------


@pytest.fixture
def small_tmpdir(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system to put temporary files in."""
    require_root()
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def big_capture(path: Path, packets: int = 1500) -> Path:
    """About 2 MB of Ethernet frames (their content does not matter here)."""
    frames = [(10**9 + i, bytes(1400), 1400) for i in range(packets)]
    path.write_bytes(pcap_file(1, frames))
    return path


def test_no_room_to_save_stdin_is_one_line_naming_the_place(
    tmp_path: Path, small_tmpdir: Path
) -> None:
    # Found in review: a full disk was reported as a read error.
    data = big_capture(tmp_path / "big.pcap").read_bytes()
    status, _out, err = run("tasks", "-", data=data, tmpdir=small_tmpdir)
    line = one_line(err)
    assert status == 2 and line.startswith("jsdissect: <stdin>: cannot save it"), line
    assert str(small_tmpdir) in line and "No space left" in line
    assert not list(small_tmpdir.iterdir())


def test_wireshark_engine_with_no_room_for_the_cut_copy_is_an_error(
    tmp_path: Path, small_tmpdir: Path
) -> None:
    # Found in review: editcap's failure to write was not seen, and the partial copy was
    # read: "0 task(s)", status 0.
    require("tshark")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(big_capture(tmp_path / "big.pcap").read_bytes()[:-10])
    status, _out, err = run("tasks", "--engine", "wireshark", str(cut), tmpdir=small_tmpdir)
    line = err.strip().splitlines()[-1]
    assert status == 2 and "cut.pcap: cannot copy the part before the cut" in line, err


def test_wireshark_engine_names_stdin_not_its_copy(tmp_path: Path) -> None:
    require("tshark")
    odd = pcap_file(9999, [(10**9, b"abcd", 4)])  # a link type Wireshark cannot merge
    status, _out, err = run("tasks", "--engine", "wireshark", "-", str(DEMO), data=odd)
    line = one_line(err)
    assert status == 2 and "<stdin>" in line and "jsdissect-spool" not in line, line


def test_wireshark_engine_with_no_room_to_decompress_is_one_line_naming_the_file(
    tmp_path: Path, small_tmpdir: Path
) -> None:
    # Found in review: "jsdissect: [Errno 28] No space left on device", naming nothing.
    require("tshark")
    packed = tmp_path / "big.pcap.zst"
    packed.write_bytes(ZstdCompressor().compress(big_capture(tmp_path / "big.pcap").read_bytes()))
    status, _out, err = run("tasks", "--engine", "wireshark", str(packed), tmpdir=small_tmpdir)
    line = one_line(err)
    assert status == 2 and line.startswith(f"jsdissect: {packed}: cannot decompress"), line
    assert str(small_tmpdir) in line and "No space left" in line
    assert not list(small_tmpdir.iterdir())
