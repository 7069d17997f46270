"""Corpus runs (issue 9): every capture we have and a set of broken ones through the real CLI,
the acceptance test of truncation, clear errors, and decode errors as data.

The CLI contract for any file given as a capture (DESIGN, README "Bad input"): exit 0, maybe
with warnings on stderr (each one line, naming the file), or exit 2 with exactly one line on
stderr naming the file; never a traceback, never a hang (a subprocess timeout is the guard).
CLI runs go through a small thread pool: each is a separate interpreter, so they overlap.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pathological
import pytest

import jsdissect
from jsdissect import plot, report
from jsdissect.capture import PCAPNG_MIN_SHB_LEN, CaptureStats, read_segments

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
SAMPLES = sorted(p for p in CAPTURES.glob("*.pcap*") if not p.name.endswith(".json"))
CLI_TIMEOUT_S = 120  # hang guard only: a run takes about half a second
WORKERS = 4


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jsdissect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        cwd=cwd,
    )


def cli_many(argument_lists: Iterable[tuple[str | Path, ...]]) -> list[Any]:
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda args: cli(*args), argument_lists))


def contract_problems(path: Path, out: subprocess.CompletedProcess[str]) -> list[str]:
    """What is wrong with one `jsdissect tasks FILE` run, by the CLI contract; [] if fine."""
    problems = []
    lines = out.stderr.splitlines()
    if "Traceback" in out.stderr + out.stdout:
        problems.append("traceback")
    if out.returncode == 0:
        bad = [line for line in lines if not line.startswith("jsdissect: warning: ")]
        bad += [line for line in lines if str(path) not in line]
        if bad:
            problems.append(f"stderr lines that are not warnings naming the file: {bad}")
    elif out.returncode == 2:
        if len(lines) != 1 or not lines[0].startswith("jsdissect: ") or str(path) not in lines[0]:
            problems.append(f"exit 2 without exactly one line naming the file: {lines}")
    else:
        problems.append(f"exit status {out.returncode}: {out.stderr.strip()}")
    return problems


def run_corpus(paths: list[Path]) -> dict[Path, subprocess.CompletedProcess[str]]:
    """`jsdissect tasks` on every path; fails listing every file that broke the contract."""
    results = dict(zip(paths, cli_many(("tasks", p) for p in paths), strict=True))
    broken = {p.name: contract_problems(p, out) for p, out in results.items()}
    broken = {name: problems for name, problems in broken.items() if problems}
    assert not broken, json.dumps(broken, indent=1)
    return results


# =========================================================================================
# The corpus: captures in captures/ and under tests/, and broken files
# =========================================================================================


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The captures tests/pathological.py writes (crafted edge cases with their truths)."""
    outdir = tmp_path_factory.mktemp("pathological")
    return [p for p in pathological.write_all(outdir) if not p.name.endswith(".json")]


def test_every_sample_and_crafted_capture_is_analyzed_without_warnings(crafted):
    """…but for the one taken with a short snap length, which must say so."""
    assert SAMPLES, f"no sample captures in {CAPTURES}"
    results = run_corpus(SAMPLES + crafted)
    assert "patho_snaplen.pcap" in {p.name for p in results}
    for path, out in results.items():
        assert out.returncode == 0, (path.name, out.stderr)
        if path.name == "patho_snaplen.pcap":
            assert out.stderr.count("\n") == 1 and "cut short by the capture's snap length" in (
                out.stderr
            ), out.stderr
        else:
            assert not out.stderr, (path.name, out.stderr)
        assert "task(s):" in out.stdout, path.name


def pcapng_blocks(data: bytes) -> list[int]:
    """Offsets where each block of a little-endian pcapng ends."""
    ends, pos = [], 0
    while pos < len(data):
        pos += struct.unpack_from("<I", data, pos + 4)[0]
        ends.append(pos)
    return ends


@pytest.fixture(scope="module")
def small_pcapng() -> bytes:
    """one_api.pcapng's SHB, IDB and first 16 packets (the start, its answer, the callback's
    beginning), closed by its statistics block: a small real pcapng of 19 blocks."""
    data = (CAPTURES / "one_api.pcapng").read_bytes()
    ends = pcapng_blocks(data)
    return data[: ends[17]] + data[ends[-2] :]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_small_pcapng_cut_at_every_block_boundary_and_inside_every_block(
    tmp_path: Path, small_pcapng: bytes
):
    ends = [0, *pcapng_blocks(small_pcapng)]
    cuts = sorted(set(ends) | {(a + b) // 2 for a, b in itertools.pairwise(ends)})
    paths = [write(tmp_path / f"cut{n:05d}.pcapng", small_pcapng[:n]) for n in cuts]
    results = run_corpus(paths)
    for cut, path in zip(cuts, paths, strict=True):
        out = results[path]
        # Only a file too short to show a section header is not a capture at all; any
        # longer one is a capture cut short.
        assert out.returncode == (2 if cut < PCAPNG_MIN_SHB_LEN else 0), (cut, out.stderr)
        if cut in ends[1:]:
            assert not out.stderr, (cut, out.stderr)  # a clean block boundary: no warning
        elif cut >= PCAPNG_MIN_SHB_LEN:
            assert "cut short" in out.stderr, (cut, out.stderr)


def bit_flips(data: bytes, rng: random.Random, flips: int) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def test_seeded_bit_flips_of_pcap_and_pcapng(tmp_path: Path, small_pcapng: bytes):
    rng = random.Random(20260302)
    seeds = {"pcap": (CAPTURES / "one_shell.pcap").read_bytes(), "pcapng": small_pcapng}
    paths = [
        write(tmp_path / f"flip{i:02d}.{kind}", bit_flips(data, rng, rng.choice([1, 2, 8, 64])))
        for kind, data in seeds.items()
        for i in range(12)
    ]
    run_corpus(paths)


def le_block(btype: int, body: bytes, total: int | None = None) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return (
        struct.pack("<II", btype, length if total is None else total)
        + body
        + struct.pack("<I", length)
    )


def broken_files(outdir: Path, small_pcapng: bytes) -> dict[str, tuple[Path, int]]:
    """name → (file, the exit status it must give)."""
    pcap = (CAPTURES / "one_shell.pcap").read_bytes()
    ends = pcapng_blocks(small_pcapng)
    shb, idb = small_pcapng[: ends[0]], small_pcapng[ends[0] : ends[1]]
    first_epb, packets = small_pcapng[ends[1] : ends[2]], small_pcapng[ends[1] :]
    cases: dict[str, tuple[bytes | None, int]] = {
        "empty": (b"", 2),
        "wrong-pcap-magic": (b"\xd4\xc3\xb2\xa2" + pcap[4:], 2),
        "wrong-pcapng-byte-order-magic": (shb[:8] + b"\x4d\x3c\x2b\x1b" + shb[12:] + idb, 2),
        "text": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 20, 2),
        "pcap-header-cut": (pcap[:10], 2),
        "pcap-header-only": (pcap[:24], 0),
        "pcap-snaplen-0": (pcap[:16] + struct.pack("<I", 0) + pcap[20:], 0),
        "pcap-record-caplen-huge": (pcap[:32] + struct.pack("<I", 2**31) + pcap[36:], 0),
        "zero-length-block": (shb + idb + first_epb + le_block(6, b"", total=0) + bytes(64), 0),
        "empty-block-bodies": (shb + idb + le_block(0x99, b"") * 3 + packets, 0),
        "packet-before-interface": (shb + packets, 0),
        "gzip-cut-short": (gzip.compress(pcap)[:-100], 0),
        "gzip-of-garbage": (gzip.compress(b"not a capture" * 10), 2),
        "directory": (None, 2),
    }
    out = {}
    for name, (data, status) in cases.items():
        path = outdir / name
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        out[name] = (path, status)
    return out


def test_broken_files_give_a_warning_or_one_line_and_the_right_status(
    tmp_path: Path, small_pcapng: bytes
):
    files = broken_files(tmp_path, small_pcapng)
    results = run_corpus([path for path, _ in files.values()])
    wrong = {
        name: (status, results[path].returncode, results[path].stderr)
        for name, (path, status) in files.items()
        if results[path].returncode != status
    }
    assert not wrong, wrong


def test_pcap_whose_header_says_snaplen_0_reads_like_the_original(tmp_path: Path):
    """Snaplen 0 in the file header means 'no limit' (libpcap): nothing is cut."""
    original = CAPTURES / "one_shell.pcap"
    data = original.read_bytes()
    zero = write(tmp_path / "snaplen0.pcap", data[:16] + struct.pack("<I", 0) + data[20:])
    a, b = cli_many([("tasks", original, "--csv", "-"), ("tasks", zero, "--csv", "-")])
    assert a.returncode == b.returncode == 0
    assert (a.stdout, a.stderr) == (b.stdout, b.stderr)  # no warning, the same table


def test_time_stamp_beyond_year_9999_is_not_an_internal_error(tmp_path: Path, small_pcapng):
    """One flipped bit (30 of the high time stamp word of the first packet) takes a 2026
        capture far into the future (how far depends on the interface's resolution; a time no
    table can show is skipped with a warning, see test_fuzz): the run keeps the contract."""
    ends = pcapng_blocks(small_pcapng)
    epb = bytearray(small_pcapng[ends[1] : ends[2]])
    epb[15] ^= 0x40  # EPB: type, length, interface id, then the high word (little-endian)
    path = write(tmp_path / "year58870.pcapng", small_pcapng[: ends[1]] + bytes(epb))
    for engine in ("python", "libpcap"):
        out = cli("tasks", path, "--engine", engine)
        assert not contract_problems(path, out), out.stderr


# =========================================================================================
# Acceptance (issue 9): a capture cut anywhere in its last 2 KB loses no complete task
# =========================================================================================

DEMO = CAPTURES / "demo.pcap"
TAIL = 2048


def pcap_record_ends(data: bytes) -> list[int]:
    """End offset of every record of a little-endian µs pcap."""
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    ends, pos = [], 24
    while pos + 16 <= len(data):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
        ends.append(pos)
    assert ends[-1] == len(data)
    return ends


def task_key(row: dict[str, Any]) -> str:
    return row["cmd_conn"] or row["callback_conn"]


def test_cut_anywhere_in_the_last_2kb_keeps_every_complete_task_identical(tmp_path: Path):
    """The cut file is made once and shortened in place (os.truncate), one byte at a time,
    over the last 2 KB of demo.pcap (10 tasks).

    At every offset, both engines read exactly the packets that are whole before the cut
    (the cheap check). The analysis is a function of those segments, so it is run once per
    distinct set of whole packets (at most one per record in the tail), and there every task
    whose packets all lie before the cut gives a row identical, column for column, to the
    untruncated file's; a task whose last packet was cut may change, but no row appears
    that the whole file does not have.
    """
    data = DEMO.read_bytes()
    record_ends = pcap_record_ends(data)
    full_segments = list(read_segments([DEMO], engine="python"))
    assert len(full_segments) == len(record_ends)  # every packet of demo.pcap is TCP
    times = [s.ts for s in full_segments]
    assert times == sorted(times)  # so "before the cut" in packets is also in time

    full = jsdissect.analyze([DEMO])
    full_rows = {task_key(r): r for r in map(report.task_row, full.task_records)}
    conn_last = {ch.conn.id: ch.conn.last_ts for ch in full.channels}
    task_last = {
        key: max(conn_last[c] for c in (r["cmd_conn"], r["callback_conn"]) if c)
        for key, r in full_rows.items()
    }

    cut_file = write(tmp_path / "demo-cut.pcap", data)
    analyzed: dict[int, int] = {}  # whole packets → complete tasks compared
    for cut in range(len(data) - 1, len(data) - TAIL - 1, -1):
        os.truncate(cut_file, cut)
        whole = sum(end <= cut for end in record_ends)
        for engine in ("python", "auto"):
            stats = CaptureStats()
            segments = list(read_segments([cut_file], engine=engine, stats=stats))
            assert segments == full_segments[:whole], (cut, engine)
            assert len(stats.warnings) == (0 if cut in record_ends else 1), (cut, stats.warnings)
        if whole in analyzed:
            continue
        cut_time = full_segments[whole].ts  # the first packet not in the file
        result = jsdissect.analyze([cut_file])
        rows = {task_key(r): r for r in map(report.task_row, result.task_records)}
        assert set(rows) <= set(full_rows), cut
        complete = [key for key, last in task_last.items() if last < cut_time]
        for key in complete:
            assert rows.get(key) == full_rows[key], (cut, key)
        analyzed[whole] = len(complete)
    # The tail really cut into tasks, and most tasks were whole at every cut.
    assert len(analyzed) > 10 and min(analyzed.values()) >= len(full_rows) - 3, analyzed
    assert min(analyzed.values()) < len(full_rows), analyzed


# =========================================================================================
# Clear errors (issue 9 item 3), beyond tests/test_cli.py
# =========================================================================================

ONE = CAPTURES / "one_shell.pcap"


def one_line_naming(out: subprocess.CompletedProcess[str], name: str, status: int = 2) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == status, out.stderr
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in out.stderr, lines
    return lines[0]


def test_output_path_that_cannot_be_written_fails_before_the_analysis(tmp_path: Path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    runs = {
        "adir": ("tasks", ONE, "--csv", "adir"),
        "missing/x.json": ("tasks", ONE, "--json", "missing/x.json"),
        "afile/x.csv": ("connections", ONE, "--csv", "afile/x.csv"),
        "missing/t.png": ("timeline", ONE, "-o", "missing/t.png"),
        "afile/t.html": ("timeline", ONE, "-o", "afile/t.html"),
    }
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for name, args in runs.items():
        line = one_line_naming(cli(*args, cwd=tmp_path), name)
        assert "directory" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_failed_write_leaves_nothing_half_written(tmp_path: Path):
    target = tmp_path / "tasks.csv"
    target.write_text("the previous, complete output\n")

    def render(out: io.TextIOBase) -> None:
        out.write("process_id,pid\n1,2\n")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as caught:
        report.write_output(str(target), render)
    assert caught.value.filename == str(target)  # named for the person, not the temp file
    assert target.read_text() == "the previous, complete output\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tasks.csv"]


def test_timeline_write_failure_names_the_output_and_leaves_nothing(tmp_path: Path):
    """The directory went away between the CLI's check and the write."""
    target = tmp_path / "gone" / "t.png"
    with pytest.raises(OSError) as caught:
        plot.write(jsdissect.analyze([ONE]).task_records, str(target))
    assert caught.value.filename == str(target) and not any(tmp_path.iterdir())


def test_written_outputs_get_the_usual_file_mode(tmp_path: Path):
    """Written through mkstemp (mode 0600) and renamed: the mode is set as open() would."""
    out = cli("tasks", ONE, "--csv", tmp_path / "t.csv")
    assert out.returncode == 0
    assert (tmp_path / "t.csv").stat().st_mode & 0o777 == report.new_file_mode()


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (("tasks", ONE, "--engine", "pcap"), "pcap"),
        (("tasks", ONE, "--columns", ","), "--columns"),
        (("summary", ONE, "--slowest", "-1"), "--slowest"),
        (("ports", ONE, "--time-wait", "-5"), "--time-wait"),
        (("tasks", ONE, "--scheduler-port", "70000"), "--scheduler-port"),
        (("tasks", ONE, "--csv", "-", "--json", "-"), "stdout"),
        (("timeline", ONE, "-o", "t.txt"), "--output"),
        (("log", ONE), "--process-id"),
    ],
)
def test_unknown_or_impossible_option_values_are_usage_errors(args, mentions: str):
    out = cli(*args)
    assert out.returncode == 2 and mentions in out.stderr and "Traceback" not in out.stderr


def test_process_id_that_does_not_exist_exits_1_for_log_and_messages():
    for command in ("log", "messages"):
        line = one_line_naming(cli(command, ONE, "--process-id", "4711"), "4711", status=1)
        assert "no task" in line


def test_directory_among_good_captures_is_named(tmp_path: Path):
    line = one_line_naming(cli("tasks", ONE, tmp_path), str(tmp_path))
    assert "directory" in line


# =========================================================================================
# Decode errors are data (issue 9 item 4)
# =========================================================================================


@pytest.fixture(scope="module")
def gap_capture(crafted: list[Path]) -> Path:
    """A crafted capture whose callback lost whole frames in gaps: two decode errors."""
    (path,) = [p for p in crafted if p.name.startswith("patho_gap_frame.")]
    return path


def test_messages_errors_lists_each_decode_error_with_connection_offset_reason(gap_capture):
    result = jsdissect.analyze([gap_capture])
    expected = [
        (e.conn, e.offset, e.reason)
        for ch in result.channels
        for e in ch.events
        if isinstance(e, jsdissect.protocol.DecodeError)
    ]
    assert len(expected) == result.decode_errors == 2
    text, as_json = cli_many(
        [
            ("messages", gap_capture, "--errors"),
            ("messages", gap_capture, "--errors", "--json", "-"),
        ]
    )
    assert text.returncode == as_json.returncode == 0, text.stderr + as_json.stderr
    header, *lines = text.stdout.splitlines()
    assert header.split() == ["time", "conn", "channel", "direction", "offset", "reason"]
    assert len(lines) == len(expected)
    for conn, offset, reason in expected:
        assert any(conn in ln and f" {offset}  " in ln and ln.endswith(reason) for ln in lines)
    rows = json.loads(as_json.stdout)
    assert sorted((r["conn"], r["offset"], r["reason"]) for r in rows) == sorted(expected)
    assert {r["type"] for r in rows} == {"DecodeError"}
    assert all(r["direction"] and r["channel"] == "api" for r in rows)


def test_only_decode_errors_have_a_reason(gap_capture):
    result = jsdissect.analyze([gap_capture])
    rows = report.message_rows(result.channels, result.task_records)
    assert all((r["reason"] is None) == (r["type"] != "DecodeError") for r in rows)


def test_task_summary_counts_the_decode_errors(gap_capture):
    out = cli("tasks", gap_capture)
    assert out.returncode == 0
    summary = out.stdout.strip().splitlines()[-1]
    assert "2 decode error(s): see 'jsdissect messages --errors'" in summary
    clean = cli("tasks", ONE)
    assert "decode error" not in clean.stdout
