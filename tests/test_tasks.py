"""The task table end to end: real captures against their ground truth and tshark's times."""

from __future__ import annotations

from pathlib import Path

import pytest

import jsdissect
from jsdissect import report
from truth import load_truth, mismatches, oracle_times, pair_rows, tshark_packets

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(
    p for p in (ROOT / "captures").glob("*") if p.suffix in (".pcap", ".pcapng", ".gz")
)


def table(capture: Path) -> list[dict]:
    return [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]


def check_against_truth(capture: Path) -> list[tuple[dict, dict]]:
    truth = load_truth(capture)
    rows = table(capture)
    assert len(rows) == len(truth["tasks"]), [(r["process_id"], r["status"]) for r in rows]
    pairs = pair_rows(rows, truth["tasks"])
    problems = [f"{t['process_id']}: {m}" for t, r in pairs for m in mismatches(t, r)]
    assert not problems, "\n".join(problems)
    return pairs


def test_samples_exist() -> None:
    assert len(SAMPLES) >= 5, "captures/ lost its samples: python tests/make_captures.py"


@pytest.mark.parametrize("capture", SAMPLES, ids=lambda p: p.name)
def test_sample_task_table_matches_truth(capture: Path) -> None:
    check_against_truth(capture)


@pytest.mark.parametrize("capture", SAMPLES, ids=lambda p: p.name)
def test_sample_times_match_tshark_to_the_microsecond(capture: Path) -> None:
    packets = tshark_packets(capture)
    checked = 0
    for row in table(capture):
        if row["cmd_conn"] is None or row["controller"] is None:
            continue
        cmd_client = (row["controller"], row["cmd_port"])
        host, port = row["remote"].rsplit(":", 1)
        callback = None
        if row["callback_src_port"] is not None:
            src = next(
                p.src
                for p in packets
                if p.dst == (row["controller"], row["callback_port"])
                and p.src[1] == row["callback_src_port"]
            )
            callback = (src, (row["controller"], row["callback_port"]))
        expected = oracle_times(packets, cmd_client, (host.strip("[]"), int(port)), callback)
        for column, value in expected.items():
            assert row[column] == value, f"{row['process_id']} {column}"
            checked += 1
    assert checked > 0
