"""The CLI as a person meets it: exit statuses, one-line errors, outputs, help."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsencode as enc
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import require
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

import jsdissect
from jsdissect import __version__, native, report

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
CMD_CLIENT, REMOTE = ("127.0.0.21", 40001), ("127.0.0.11", 4455)
T0 = 1_772_442_900.0


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jsdissect", *args], capture_output=True, text=True, timeout=120
    )


def small_capture(path: Path) -> Path:
    """A command connection: handshake, start, answer, close, ok, FIN — four packets of data."""
    (cip, cport), (rip, rport) = CMD_CLIENT, REMOTE
    c2s = Ether() / IP(src=cip, dst=rip) / TCP(sport=cport, dport=rport)
    s2c = Ether() / IP(src=rip, dst=cip) / TCP(sport=rport, dport=cport)
    start = enc.start_remote_task(59999, kind="process")
    answer = enc.process_answer("2026-03-02T09:15:00.123Z", "84217301")
    close = enc.remote_task_close("84217301")
    ok = enc.ok_answer("2026-03-02T09:15:02.456Z")
    c, s = 1000, 5000
    packets = [
        c2s.copy() / b"",
        s2c.copy() / b"",
        c2s.copy() / b"",
        c2s.copy() / start,
        s2c.copy() / answer,
        c2s.copy() / close,
        s2c.copy() / ok,
        c2s.copy() / b"",
    ]
    flags = ["S", "SA", "A", "PA", "PA", "PA", "PA", "FA"]
    seqs = [
        (c, 0),
        (s, c + 1),
        (c + 1, s + 1),
        (c + 1, s + 1),
        (s + 1, c + 1 + len(start)),
        (c + 1 + len(start), s + 1 + len(answer)),
        (s + 1 + len(answer), c + 1 + len(start) + len(close)),
        (c + 1 + len(start) + len(close), s + 1 + len(answer) + len(ok)),
    ]
    for i, (pkt, flag, (seq, ack)) in enumerate(zip(packets, flags, seqs, strict=True)):
        pkt[TCP].flags, pkt[TCP].seq, pkt[TCP].ack = flag, seq, ack
        pkt.time = T0 + i * 0.01
    wrpcap(str(path), packets)
    return path


@pytest.fixture()
def capture(tmp_path: Path) -> Path:
    return small_capture(tmp_path / "small.pcap")


def test_version_and_help() -> None:
    version, core = run("--version").stdout.strip().splitlines()
    assert version.endswith(__version__)
    expected = "core: compiled (mypyc)" if native.status().compiled else "core: Python ("
    assert core.startswith(expected)
    for command in ("tasks", "connections", "messages"):
        out = run(command, "--help")
        assert out.returncode == 0 and "Examples:" in out.stdout


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p / "missing.pcap",
        lambda p: p,  # a directory
        lambda p: _write(p / "empty.pcap", b""),
        lambda p: _write(p / "notes.txt", b"hello\n" * 10),
    ],
    ids=["missing", "directory", "empty", "not-a-capture"],
)
def test_unusable_input_is_one_line_and_exit_2(tmp_path: Path, make) -> None:
    target = make(tmp_path)
    out = run("tasks", str(target))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert target.name in lines[0]


@pytest.mark.parametrize("engine", ["auto", "python", "libpcap", "wireshark"])
def test_a_capture_whose_name_is_not_utf8(tmp_path: Path, engine: str) -> None:
    """Found in review: a capture named in Latin-1 (okü.pcap, copied from an old host) gave
    an internal error, exit 3, with every engine but python. The name is shown as Python
    shows a name it cannot decode."""
    if engine == "wireshark":
        require("tshark")
    odd = tmp_path / os.fsdecode(b"ok\xfc.pcap")
    odd.write_bytes((CAPTURES / "one_shell.pcap").read_bytes())
    out = run("tasks", str(odd), "--engine", engine, "--csv", "-")
    if engine == "libpcap":  # pcapy-ng cannot pass such a name to libpcap
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr == (
            f"jsdissect: {tmp_path}/ok\\udcfc.pcap: libpcap cannot open it: its name is not"
            " UTF-8, which pcapy-ng needs (--engine python reads it)\n"
        )
        return
    assert out.returncode == 0, out.stderr
    (task,) = csv.DictReader(io.StringIO(out.stdout))
    assert task["status"] == "completed"


def _with_a_huge_packet_block(pcapng: bytes, after: int) -> bytes:
    """The little-endian pcapng with an Enhanced Packet Block of 300,000 bytes (more than
    Wireshark takes for one packet, 262,144) after its first `after` blocks."""
    pos = 0
    for _ in range(after):
        pos += struct.unpack_from("<I", pcapng, pos + 4)[0]
    frame = b"\xff" * 12 + b"\x88\xb5" + bytes(300_000 - 14)
    body = struct.pack("<IIIII", 0, 0, 0, len(frame), len(frame)) + frame
    block = struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    return pcapng[:pos] + block + pcapng[pos:]


def test_the_wireshark_engine_reads_up_to_what_wireshark_takes_for_damage(
    tmp_path: Path,
) -> None:
    """Found in review: tshark stops at a block it takes for damage that jsdissect's reader
    reads past, and whether pyshark passed its error on depended on timing: the same run
    failed, or lost the rest without a word. Now always the part before it, with a warning."""
    require("tshark")
    damaged = tmp_path / "damaged.pcapng"
    whole = (CAPTURES / "one_api.pcapng").read_bytes()
    damaged.write_bytes(_with_a_huge_packet_block(whole, 2 + 30))  # SHB, IDB, 30 packets
    runs = [run("tasks", str(damaged), "--engine", "wireshark", "--csv", "-") for _ in range(3)]
    assert len({(r.returncode, r.stdout, r.stderr) for r in runs}) == 1
    assert runs[0].returncode == 0
    assert runs[0].stderr.startswith(
        f"jsdissect: warning: {damaged}: Wireshark's reader stops at what it takes for"
        f' damage: The file "{damaged}" appears to be damaged or corrupt.'
    )
    (task,) = csv.DictReader(io.StringIO(runs[0].stdout))
    assert task["status"] == "running"  # its end lies after the damage
    whole_run = run("tasks", str(damaged), "--csv", "-", "-q")  # the default reads past
    (task,) = csv.DictReader(io.StringIO(whole_run.stdout))
    assert task["status"] == "completed" and whole_run.stderr == ""


def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    """Found in review: a newline in a file name split the one-line error, and a warning
    too. Shown escaped, as text from the wire is on the terminal."""
    missing = tmp_path / "no\nsuch.pcap"
    out = run("tasks", str(missing))
    assert out.returncode == 2
    assert out.stderr == f"jsdissect: {tmp_path}/no\\nsuch.pcap: no such file\n"
    cut = tmp_path / "cut\n\x1b[2J.pcap"
    cut.write_bytes((CAPTURES / "one_shell.pcap").read_bytes()[:3000])
    out = run("tasks", str(cut), "-q")
    assert out.returncode == 0
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"jsdissect: warning: {tmp_path}/cut\\n\\x1b[2J.pcap: cut short")


def test_truncated_capture_is_analyzed_with_a_warning(capture: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(capture.read_bytes()[:-5])
    out = run("connections", str(cut))
    assert out.returncode == 0, out.stderr
    assert "warning" in out.stderr and "cut.pcap" in out.stderr
    assert "127.0.0.21:40001" in out.stdout


def test_connections_lists_the_connection(capture: Path) -> None:
    out = run("connections", str(capture), "--json", "-")
    assert out.returncode == 0, out.stderr
    (conn,) = json.loads(out.stdout)
    assert conn["client"] == "127.0.0.21:40001" and conn["server"] == "127.0.0.11:4455"
    assert conn["channel"] == "cmd" and conn["state"] == "closed"
    assert conn["syn"] == "2026-03-02T09:15:00.000000Z"
    assert conn["bytes_c2s"] > 0 and conn["bytes_s2c"] > 0


def test_tasks_json_to_stdout_keeps_summary_on_stderr(capture: Path) -> None:
    out = run("tasks", str(capture), "--json", "-")
    assert out.returncode == 0, out.stderr
    (task,) = json.loads(out.stdout)
    assert task["process_id"] == "84217301" and task["callback_port"] == 59999
    assert task["kind"] == "shell" and task["status"] == "callback-missing"
    assert "1 task(s)" in out.stderr


def test_unknown_option_values_are_rejected(capture: Path) -> None:
    out = run("tasks", str(capture), "--status", "bogus")
    assert out.returncode == 2 and "bogus" in out.stderr
    out = run("tasks", str(capture), "--columns", "process_id,nonsense")
    assert out.returncode == 2 and "nonsense" in out.stderr
    assert "known: process_id, pid, job," in " ".join(out.stderr.split())  # what to use


@pytest.mark.parametrize("command", ["connections", "summary", "ports", "log", "timeline"])
def test_only_tasks_and_messages_offer_the_wireshark_engine(command: str) -> None:
    assert "wireshark" not in run(command, "--help").stdout
    assert "wireshark" in run("tasks", "--help").stdout
    out = run(command, str(CAPTURES / "demo.pcap"), "--engine", "wireshark")
    assert out.returncode == 2 and "'wireshark' is not one of" in out.stderr


def test_log_takes_a_task_or_all_and_says_when_there_is_none(capture: Path, tmp_path) -> None:
    out = run("log", str(capture), "--all", "--process-id", "84217301")
    assert out.returncode == 2 and "either --process-id ID or --all" in out.stderr
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(capture.read_bytes()[:24])  # the file header, no packet
    out = run("log", str(empty), "--all")
    assert out.returncode == 1 and out.stderr == f"jsdissect: no task in {empty}\n"


def test_tasks_help_lists_the_columns_as_the_table_has_them() -> None:
    """The column list typed into `tasks --help` is the table's, in order, with each
    duration's span as the table computes it."""
    text = run("tasks", "--help").stdout
    listing = text[text.index("Columns of --csv") :].split("\n\n", 1)[1]
    names, spans = [], {}
    for line in listing.splitlines():
        words = line.split()
        if "→" in words:
            names.append(words[0])
            spans[words[0]] = (words[1], words[3])
        else:
            names += words
    assert names == [c.name for c in report.TASK_COLUMNS]
    assert all(spans[name] == span for name, span in report.DURATIONS.items())


def test_columns_asked_for_by_name_are_shown_whole() -> None:
    # Found in review: `--columns process_id,error` still cut the error at 48 characters.
    demo = str(CAPTURES / "demo.pcap")
    errors = [
        r["error"] for r in csv.DictReader(io.StringIO(run("tasks", demo, "--csv", "-").stdout))
    ]
    longest = max(errors, key=len)
    assert len(longest) > report.MAX_CELL
    assert longest in run("tasks", demo, "--columns", "process_id,error", "-q").stdout
    assert longest not in run("tasks", demo, "--columns", "process_id,status", "-q").stdout
    assert longest not in run("tasks", demo, "-q").stdout  # (the default table: cut)


def test_log_of_a_process_id_that_repeats_heads_each_task(tmp_path: Path) -> None:
    # Found in review: two tasks of one process id (the demo again an hour later) printed
    # their logs back to back, with nothing to tell where one ended.
    later = tmp_path / "later.pcap"
    packets = rdpcap(str(CAPTURES / "demo.pcap"))
    for packet in packets:
        packet.time += 3600
    wrpcap(str(later), packets)
    out = run("log", str(CAPTURES / "demo.pcap"), str(later), "--process-id", "985860244")
    headings = [line for line in out.stdout.splitlines() if line.startswith("== task ")]
    assert out.returncode == 0 and len(headings) == 2
    first, second = (line.split(", from ")[1] for line in headings)
    assert first < second and second[11:13] == f"{(int(first[11:13]) + 1) % 24:02d}"
    alone = run("log", str(CAPTURES / "demo.pcap"), "--process-id", "985860244")
    assert "== task " not in alone.stdout and alone.stdout in out.stdout


@pytest.mark.parametrize("command", ["log", "messages"])
def test_help_examples_name_a_task_of_the_demo(command: str) -> None:
    lines = [ln.split() for ln in run(command, "--help").stdout.splitlines()]
    (example,) = [ln for ln in lines if ln[:1] == ["jsdissect"] and "--process-id" in ln]
    assert example[2] == "captures/demo.pcap"
    out = run(example[1], str(CAPTURES / "demo.pcap"), *example[3:])
    assert out.returncode == 0 and out.stdout, (example, out.stderr)


def test_unknown_process_id_says_so_and_exits_1(capture: Path) -> None:
    out = run("messages", str(capture), "--process-id", "999")
    assert out.returncode == 1 and "999" in out.stderr


def test_unwritable_output_is_a_clear_error(capture: Path, tmp_path: Path) -> None:
    out = run("tasks", str(capture), "--csv", str(tmp_path / "no" / "such" / "dir.csv"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# --- inputs and outputs that are not plain files (found by a review as a user would try) ---


def test_a_device_as_input_is_refused_without_reading_it() -> None:
    out = run("tasks", "/dev/zero")  # read to its end, it would never end
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "/dev/zero" in line and "not a regular file" in line


def test_output_to_a_fifo_is_written_into_it_not_replaced(capture: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    out = run("tasks", str(capture), "--csv", str(fifo), "-q")
    reader.join(timeout=60)
    assert out.returncode == 0, out.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)  # a rename over it would leave a plain file
    assert received and received[0].startswith("process_id,pid,")


def test_output_through_a_symlink_replaces_the_file_and_keeps_the_link(
    capture: Path, tmp_path: Path
) -> None:
    real = _write(tmp_path / "real.csv", b"old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real.name)
    out = run("tasks", str(capture), "--csv", str(link), "-q")
    assert out.returncode == 0, out.stderr
    assert link.is_symlink() and real.read_text().startswith("process_id,")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_full_device_is_an_error_and_stays_a_device(capture: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    os.mknod(full, 0o600 | stat.S_IFCHR, os.makedev(1, 7))  # a /dev/full of our own
    out = run("tasks", str(capture), "--csv", str(full), "-q")
    assert out.returncode == 2, out.stderr
    assert "full" in out.stderr and "No space left" in out.stderr
    assert stat.S_ISCHR(full.lstat().st_mode)


def test_an_input_capture_is_never_overwritten(capture: Path) -> None:
    before = capture.read_bytes()
    out = run("tasks", str(capture), "--csv", str(capture))
    assert out.returncode == 2 and "input capture" in out.stderr
    assert capture.read_bytes() == before


def test_csv_and_json_to_the_same_file_is_a_usage_error(capture: Path, tmp_path: Path) -> None:
    same = str(tmp_path / "out")
    out = run("tasks", str(capture), "--csv", same, "--json", same)
    assert out.returncode == 2 and "same file" in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("ports", "--parquet", "p.parquet"),
        ("log", "--all", "--parquet", "l.parquet"),
        ("timeline", "-o", "t.png", "--csv", "t.csv"),
    ],
    ids=["ports-parquet", "log-parquet", "timeline-csv"],
)
def test_outputs_a_command_cannot_write_are_not_offered(
    capture: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    command, *rest = args
    out = run(command, str(capture), *(str(tmp_path / a) if "." in a else a for a in rest))
    assert out.returncode == 2 and "No such option" in out.stderr
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".csv", ".png", ".parquet")]


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_time_wait_must_be_a_real_number_of_seconds(capture: Path, value: str) -> None:
    out = run("ports", str(capture), "--time-wait", value)
    assert out.returncode == 2 and "--time-wait" in out.stderr and "Traceback" not in out.stderr


INTERRUPTED = """
import sys
from jsdissect import cli, pipeline

def interrupted(*args, **kwargs):
    raise KeyboardInterrupt  # as Ctrl-C during the analysis
pipeline.analyze = interrupted
sys.argv = ["jsdissect", "tasks", sys.argv[1]]
cli.main()
"""


def test_ctrl_c_exits_130_quietly(capture: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, str(capture)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 130
    assert out.stderr == "" and out.stdout == ""


@pytest.fixture(scope="module")
def busy_captures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """6,000 dense tasks (seconds of reading), as pcap and gzip-compressed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
    import generate

    where = tmp_path_factory.mktemp("busy")
    plain = Path(generate.generate(generate.Spec("dense", tasks=6_000), where).paths[0])
    packed = where / "dense.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    return plain, packed


def _reading(pid: int, files: tuple[Path, ...]) -> bool:
    """Whether process `pid` has one of `files` open (Linux /proc), or one in a folder of
    them: past its start-up, inside the command that turns Ctrl-C into status 130."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:  # (a descriptor closed while listed, or the process gone)
        return False
    return any(Path(link) == f or Path(link).parent == f for link in links for f in files)


def _interrupted(capture: Path, spool: Path, delay: float) -> tuple[int, str]:
    """(status, stderr) of `tasks` sent SIGINT `delay` s after it began to read the capture
    or its temporary copy (a signal during Python's start-up would only test Python)."""
    env = {**os.environ, "TMPDIR": str(spool)}
    argv = [sys.executable, "-m", "jsdissect", "tasks", str(capture), "--jobs", "0", "-q"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    while not _reading(proc.pid, (capture, spool)) and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode(errors="replace")


@pytest.mark.parametrize("compressed", [False, True], ids=["pcap", "gzip"])
def test_ctrl_c_while_reading_exits_130_and_leaves_no_copy(
    busy_captures: tuple[Path, Path], tmp_path: Path, compressed: bool
) -> None:
    """Found in review, with the compiled core: Ctrl-C during the read aborted the process
    one time in five ("fatal: out of memory", status 134: mypyc takes a failed product of
    large integers for a lack of memory, and the multiplication had seen the signal), and
    an interrupted read of a compressed capture left its decompressed copy behind every
    time (a compiled generator runs no `finally` when dropped). Interrupted at points
    spread over the read, every run must end as Ctrl-C should, and leave nothing."""
    capture = busy_captures[compressed]
    spool = tmp_path / "tmp"
    spool.mkdir()
    for delay in (0.15, 0.25, 0.35, 0.45, 0.55, 0.65):
        status, err = _interrupted(capture, spool, delay)
        assert (status, err) == (130, ""), delay
        assert not list(spool.iterdir()), delay


def test_a_ring_buffer_file_with_no_packet_yet_is_skipped(tmp_path: Path) -> None:
    """Found in review: the newest file of a ring buffer being written (tcpdump -C) is empty
    or cut in its header until tcpdump flushes it, and it failed the whole run. Beside
    other files it is skipped with a warning; alone it is still unusable input."""
    demo = CAPTURES / "demo.pcap"
    empty, cut, prefix = tmp_path / "ring_2.pcap", tmp_path / "ring_3.pcap", tmp_path / "p.pcap"
    empty.write_bytes(b"")
    cut.write_bytes(demo.read_bytes()[:10])
    prefix.write_bytes(demo.read_bytes()[:3])
    whole = run("tasks", str(demo), "--csv", "-")
    ring = run("tasks", str(demo), str(empty), str(cut), "--csv", "-")
    assert ring.returncode == 0 and ring.stdout == whole.stdout
    assert f"{empty}: empty file: no packet in it yet, skipped" in ring.stderr
    assert f"{cut}: cut short in the pcap file header: no packet in it yet" in ring.stderr
    for alone, why in ((empty, "empty file"), (prefix, "cut short in the file header")):
        out = run("tasks", str(alone))
        assert out.returncode == 2 and out.stderr.strip().endswith(f"{alone}: {why}")


def test_closed_standard_streams(capture: Path) -> None:
    # stderr closed: the table still comes out; stdout closed: a clear error, not a bug.
    args = [sys.executable, "-m", "jsdissect", "tasks", str(capture)]
    quiet = subprocess.run(
        args,
        stdout=subprocess.PIPE,
        stderr=None,
        close_fds=True,
        preexec_fn=lambda: os.close(2),
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 0 and quiet.stdout.startswith("process_id")
    for extra in (["--json", "-"], [], ["-q"]):  # a CSV/JSON output, the table, quietly
        blind = subprocess.run(
            [*args, *extra],
            stdout=None,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: os.close(1),
            text=True,
            timeout=120,
        )
        assert blind.returncode == 2, extra
        assert "standard output" in blind.stderr and "closed" in blind.stderr, extra
    with open(os.devnull, "w") as devnull:  # closed, but not written to: no error
        to_files = subprocess.run(
            [*args, "-q", "--csv", devnull.name], stdout=None, preexec_fn=lambda: os.close(1)
        )
    assert to_files.returncode == 0


def test_a_locale_that_cannot_encode_the_text_neither_fails_nor_changes_the_data(
    tmp_path: Path,
) -> None:
    """Found in review: in a latin-1 locale (or cp1252, a Windows redirect) the "→" of
    message lines failed with an internal error, and `--csv -` wrote other bytes than
    `--csv FILE`. Text for people is shown escaped; data is UTF-8 wherever it goes."""
    demo = str(CAPTURES / "demo.pcap")
    env = os.environ | {"PYTHONIOENCODING": "iso-8859-1"}

    def latin1(*args: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "jsdissect", *args]
        return subprocess.run(command, capture_output=True, env=env, timeout=120)

    lines = latin1("messages", demo)
    assert lines.returncode == 0 and b"\\u2192" in lines.stdout
    on_stdout = latin1("messages", demo, "--csv", "-")
    in_file = tmp_path / "messages.csv"
    assert latin1("messages", demo, "--csv", str(in_file)).returncode == 0
    assert on_stdout.returncode == 0 and on_stdout.stdout == in_file.read_bytes()
    assert "→".encode() in on_stdout.stdout


FULL_STDOUT_ARGS = [
    ["summary"],
    ["tasks", "--csv", "-"],
    ["tasks", "--json", "-"],
    ["log", "--all", "--csv", "-"],
]


@pytest.mark.parametrize("args", FULL_STDOUT_ARGS)
def test_a_full_standard_output_is_named(capture: Path, args: list[str]) -> None:
    # Found in review: data written with `-` (CSV, JSON, a log) failed with no name.
    command, *rest = args
    with open("/dev/full", "w") as full:
        run = subprocess.run(
            [sys.executable, "-m", "jsdissect", command, str(capture), *rest],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert run.returncode == 2
    assert run.stderr == "jsdissect: standard output: No space left on device\n"


def test_a_ring_buffer_of_more_files_than_the_open_file_limit(
    capture: Path, tmp_path: Path
) -> None:
    # The files of a ring buffer are merged by time, all open at once: with a soft limit of
    # 64 descriptors, 100 files still go through (the limit is raised up to the hard one).
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 400:
        pytest.skip(f"hard limit {hard} on open files leaves no room to test")
    files = []
    for i in range(100):
        files.append(tmp_path / f"ring_{i:03d}.pcap")
        files[-1].write_bytes(capture.read_bytes())
    out = subprocess.run(
        [sys.executable, "-m", "jsdissect", "connections", *map(str, files), "--json", "-"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard)),
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) >= 1


def test_columns_and_picture_names_that_say_nothing_or_too_much(
    capture: Path, tmp_path: Path
) -> None:
    out = run("tasks", str(capture), "--columns", "")
    assert out.returncode == 2 and "--columns" in out.stderr
    out = run("tasks", str(capture), "--columns", "process_id,status,process_id", "-q")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["process_id", "status"]
    out = run("timeline", str(capture), "-o", str(tmp_path / "t.html") + "/")
    assert out.returncode == 2 and not (tmp_path / "t.html").exists()


def test_analyze_takes_one_capture_by_its_name(capture: Path) -> None:
    one = jsdissect.analyze(str(capture))
    assert [t.process_id for t in one.task_records] == ["84217301"]
    assert one.paths == (str(capture),)


def test_a_capture_without_tasks_says_where_it_looked(capture: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(capture.read_bytes()[:24])
    out = run("tasks", str(empty), "--scheduler-port", "5000", "--no-heuristics")
    assert out.returncode == 0
    assert out.stdout.splitlines()[-1] == (
        "No JobScheduler task found (looked at command port(s) 5000); another port:"
        " --scheduler-port PORT."
    )
    assert "looked at" not in run("tasks", str(capture), "--status", "running").stdout


# --- Parquet ---------------------------------------------------------------------------------


def parquet_table(path: Path) -> pa.Table:
    return pq.read_table(path)


@pytest.mark.parametrize("command", ["tasks", "connections", "messages", "summary"])
def test_parquet_holds_the_rows_of_the_csv_with_their_types(tmp_path: Path, command: str) -> None:
    out = run(command, str(CAPTURES / "demo.pcap"), "--csv", "-", "--parquet", str(tmp_path / "t"))
    assert out.returncode == 0, out.stderr
    table = parquet_table(tmp_path / "t")
    header, *lines = out.stdout.splitlines()
    assert table.column_names == header.split(",") and table.num_rows == len(lines) > 0
    for field in table.schema:
        assert field.type in (
            pa.timestamp("us", tz="UTC"),
            pa.int64(),
            pa.float64(),
            pa.string(),
            pa.large_string(),
        ), field


def test_parquet_times_are_the_exact_microseconds(tmp_path: Path) -> None:
    out = run("tasks", str(CAPTURES / "demo.pcap"), "--json", "-", "--parquet", str(tmp_path / "t"))
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    table = parquet_table(tmp_path / "t").to_pylist()
    for row, stored in zip(rows, table, strict=True):
        for name in ("start_sent", "begin_answered", "callback_closed"):
            iso = None if stored[name] is None else stored[name].isoformat(timespec="microseconds")
            assert iso == (row[name] and row[name].replace("Z", "+00:00")), name
        assert stored["startup_ms"] == row["startup_ms"] and stored["pid"] == row["pid"]


def test_parquet_of_messages_is_written_a_row_group_at_a_time(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(report, "PARQUET_GROUP_ROWS", 100)
    result = jsdissect.analyze(CAPTURES / "parallel_50.pcap")
    rows = report.MessageRows(result.channels, result.task_records)
    with open(tmp_path / "m", "wb") as out:
        report.write_parquet(rows, report.MESSAGE_COLUMNS, out)
    count = sum(1 for _ in rows)
    assert pq.ParquetFile(tmp_path / "m").metadata.num_row_groups == -(-count // 100) > 10
    assert parquet_table(tmp_path / "m").to_pandas().equals(result.messages)


def test_parquet_of_no_rows_keeps_the_columns(tmp_path: Path) -> None:
    out = run("tasks", str(CAPTURES / "demo.pcap"), "--status", "start-failed", "-q")
    assert out.returncode == 0 and "start-failed" not in out.stdout  # demo has none
    out = run(
        "tasks",
        str(CAPTURES / "demo.pcap"),
        "--status",
        "start-failed",
        "--parquet",
        str(tmp_path / "t"),
    )
    assert out.returncode == 0, out.stderr
    table = parquet_table(tmp_path / "t")
    assert table.num_rows == 0 and "process_id" in table.column_names


def test_parquet_through_a_pipe_and_never_two_outputs_on_stdout(tmp_path: Path) -> None:
    piped = subprocess.run(
        [sys.executable, "-m", "jsdissect", "tasks", str(CAPTURES / "demo.pcap"), "--parquet", "-"],
        capture_output=True,
        timeout=120,
    )
    assert piped.returncode == 0 and b"task(s)" in piped.stderr  # the summary moved aside
    (tmp_path / "t").write_bytes(piped.stdout)
    assert len(pd.read_parquet(tmp_path / "t")) == 10
    twice = run("tasks", str(CAPTURES / "demo.pcap"), "--parquet", "-", "--json", "-")
    assert twice.returncode == 2 and "only one of" in twice.stderr


def test_parquet_without_pyarrow_fails_before_the_analysis(tmp_path: Path) -> None:
    blocked = "import sys; sys.modules['pyarrow'] = None; from jsdissect.cli import main; main()"
    out = subprocess.run(
        [sys.executable, "-c", blocked, "tasks", "/nonexistent.pcap", "--parquet", "t.parquet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == "jsdissect: --parquet needs pyarrow: pip install 'jsdissect[parquet]'\n"
    assert not list(tmp_path.iterdir())


def test_output_names_that_are_empty_or_the_same_file_are_refused(tmp_path: Path) -> None:
    """Found in review: `--json "$OUT"` with OUT unset wrote nothing and said nothing, and
    a symbolic link let --csv and --json write one file (the second won)."""
    demo = str(CAPTURES / "demo.pcap")
    for option in ("--csv", "--json", "--parquet"):
        out = run("tasks", demo, option, "")
        assert out.returncode == 2 and "empty file name" in out.stderr, option
    out = run("timeline", demo, "-o", "")
    assert out.returncode == 2 and "empty file name" in out.stderr
    out = run("connections", demo, "")  # a capture named by an unset variable
    assert out.returncode == 2 and "CAPTURE...': an empty file name" in out.stderr
    (tmp_path / "link.out").symlink_to(tmp_path / "same.out")
    out = run(
        "tasks", demo, "--csv", str(tmp_path / "same.out"), "--json", str(tmp_path / "link.out")
    )
    assert out.returncode == 2 and "the same file" in out.stderr
    assert not (tmp_path / "same.out").exists()


def test_a_dask_address_dask_cannot_take_is_bad_input() -> None:
    pytest.importorskip("distributed")
    for address in ("bogus", "http://x:1"):
        out = run("tasks", str(CAPTURES / "demo.pcap"), "--dask-scheduler", address)
        assert out.returncode == 2, (address, out.stderr)
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith(f"jsdissect: Dask scheduler {address}: cannot connect")


def test_summary_writing_a_table_still_shows_the_slowest_tasks(tmp_path: Path) -> None:
    """Found in review: with --csv FILE, `summary` printed nothing, --slowest included."""
    demo = str(CAPTURES / "demo.pcap")
    out = run("summary", demo, "--slowest", "2", "--csv", str(tmp_path / "phases.csv"))
    assert out.returncode == 0, out.stderr
    assert "Slowest" in out.stdout and "task(s):" in out.stdout.splitlines()[-1]
    assert "phase" in (tmp_path / "phases.csv").read_text().splitlines()[0]
    piped = run("summary", demo, "--csv", "-")
    assert piped.stdout.startswith("remote,") and "Slowest" in piped.stderr
    assert run("summary", demo, "--csv", str(tmp_path / "q.csv"), "-q").stdout == ""


def test_errors_stay_one_readable_line(tmp_path: Path) -> None:
    """Found in review: 8,000 unknown column names made a 71 KB error line, and a link
    type libpcap cannot filter quoted jsdissect's whole capture filter (now it is skipped
    with a one-line warning, as every link type without a decoder)."""
    demo = str(CAPTURES / "demo.pcap")
    names = ",".join(f"nope{i}" for i in range(8000))
    out = run("tasks", demo, "--columns", names)
    assert out.returncode == 2 and "and 7990 more" in out.stderr and len(out.stderr) < 2000
    from pcapfiles import pcap_file

    odd = tmp_path / "user0.pcap"
    odd.write_bytes(pcap_file(147, [(1_772_442_902_000_000_000, b"\x00" * 60, 60)]))
    out = run("tasks", str(odd), "--engine", "python")
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 0 and len(line) < 300, line
    assert line == f"jsdissect: warning: {odd}: link type 147 not supported, its packets skipped"


def test_text_after_a_table_written_to_a_file_and_quiet_summary(tmp_path: Path) -> None:
    """Found in review: with the table in a file, what `tasks` prints began with the blank
    line that separates it from a table on the terminal; `summary -q` printed the one-line
    summary that -q leaves out under every other table."""
    demo = str(CAPTURES / "demo.pcap")
    out = run("tasks", demo, "--csv", str(tmp_path / "t.csv"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Phases per remote scheduler")
    shown = run("tasks", demo)
    assert "\n\nPhases per remote scheduler" in shown.stdout  # after the table: one blank line
    quiet, loud = run("summary", demo, "-q"), run("summary", demo)
    assert "\n10 task(s): " in loud.stdout and "\n10 task(s): " not in quiet.stdout
    assert quiet.stdout == loud.stdout[: len(quiet.stdout)]


def _on_a_terminal(columns: int, *args: str) -> str:
    """What jsdissect prints to a terminal `columns` wide (a pseudo-terminal)."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns)}
    cmd = [sys.executable, "-m", "jsdissect", *args]
    subprocess.run(cmd, stdout=follower, stderr=subprocess.PIPE, env=env, timeout=300)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return out.decode().replace("\r\n", "\n")


def test_the_default_task_table_fits_the_terminal() -> None:
    """Found in review: the default table was 190 characters wide on an 80-column terminal.
    On a terminal, the columns the others derive from are left out first until the lines
    fit (the last, error, may run on as tshark's Info column does), and a line says which;
    --columns and output to a pipe or file show every column asked for."""
    demo = str(CAPTURES / "demo.pcap")
    narrow = _on_a_terminal(100, "tasks", demo, "-q").splitlines()
    header, rows, note = narrow[0], narrow[1:-1], narrow[-1]
    assert header.split() == [
        "process_id",
        "remote",
        "start_sent",
        "startup_ms",
        "total_ms",
        "status",
        "error",
    ]
    assert all(len(line) <= 100 for line in [header, *rows] if "Z-JAVA" not in line)
    assert note.startswith("(10 column(s) left out to fit the terminal: signal, kind,")
    wide = _on_a_terminal(300, "tasks", demo, "-q").splitlines()
    assert "callback_delay_ms" in wide[0] and not wide[-1].startswith("(")
    chosen = _on_a_terminal(40, "tasks", demo, "-q", "--columns", "process_id,kind,status,run_ms")
    assert chosen.splitlines()[0].split() == ["process_id", "kind", "status", "run_ms"]
    piped = run("tasks", demo, "-q").stdout.splitlines()[0]
    assert "callback_delay_ms" in piped and "signal" in piped
