"""Regenerates every committed sample capture in captures/ with its truth file.

    python tests/make_captures.py [--out captures] [--only demo ...]

Needs root (capture on lo, nftables), tcpdump and dumpcap. See captures/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere

from capture_run import capture_unavailable, emulate_and_capture
from emulator import DEMO, FAILURES, ONE_API, ONE_SHELL, PARALLEL_50, SCALA_API
from emulator.scenario import Scenario

CAPTURES: dict[str, Scenario] = {
    "one_shell.pcap": ONE_SHELL,
    "one_api.pcapng": ONE_API,
    "scala_api.pcap": SCALA_API,
    "parallel_50.pcap": PARALLEL_50,
    "failures.pcap": FAILURES,
    "demo.pcap": DEMO,
}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "captures"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--only", nargs="+", choices=sorted(CAPTURES), help="these files only")
    args = parser.parse_args(argv)
    names = args.only or list(CAPTURES)
    for name in names:
        fmt = "pcapng" if name.endswith(".pcapng") else "pcap"
        reason = capture_unavailable(fmt, CAPTURES[name])
        if reason:
            print(f"cannot capture: {reason}", file=sys.stderr)
            return 2
    started = time.monotonic()
    for name in names:
        began = time.monotonic()
        capture, truth = emulate_and_capture(CAPTURES[name], args.out / name)
        size = capture.stat().st_size
        seconds = time.monotonic() - began
        print(f"{capture}  {size / 1024:7.1f} KiB  {truth.name}  {seconds:5.1f} s", file=sys.stderr)
    print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
