"""Emulate and capture in one call: a real tcpdump (pcap) or dumpcap (pcapng) around a scenario.

    capture, truth = emulate_and_capture(emulator.ONE_SHELL, "out/one_shell.pcap")

Needs root (capture on `lo`, nftables for dropped callbacks) and the capture tool; tests
ask `capture_unavailable()` first and skip (or fail in CI) with its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from emulator import Recorder, Scenario, run_scenario
from emulator.replay import missing_data, read_segments

Format = Literal["pcap", "pcapng"]
SNAPLEN = 262144
READY_TIMEOUT = 10.0
RING_KIB = 131072
TOOLS: dict[str, str] = {"pcap": "tcpdump", "pcapng": "dumpcap"}


class CaptureError(RuntimeError):
    pass


def capture_unavailable(fmt: Format = "pcap", scenario: Scenario | None = None) -> str | None:
    """Why a live capture cannot run here, or None."""
    if os.geteuid() != 0:
        return "live captures need root (capture on lo, nftables)"
    if shutil.which(TOOLS[fmt]) is None:
        return f"{TOOLS[fmt]} is not installed"
    if scenario is not None and scenario.needs_firewall() and shutil.which("nft") is None:
        return "nft (nftables) is not installed"
    return None


def capture_filter(scenario: Scenario) -> str:
    """Only the scenario's traffic: its addresses are dedicated loopback addresses."""
    hosts = " or ".join(f"host {ip}" for ip in scenario.addresses())
    return f"tcp and ({hosts})"


@dataclass(frozen=True)
class Tap:
    """Where a capture listens: an interface (`any`: all of them, as one capture), in a
    network namespace (`ip netns` name) or here, with the link type asked for (None: the
    tool's default; `-y`, e.g. LINUX_SLL or LINUX_SLL2 on `any`)."""

    interface: str = "lo"
    netns: str | None = None
    linktype: str | None = None


LOOPBACK = Tap()


def _command(
    path: Path, fmt: Format, bpf: str, snaplen: int, tap: Tap = LOOPBACK
) -> tuple[list[str], str]:
    """The capture command and the stderr text that says it is capturing."""
    where = ["ip", "netns", "exec", tap.netns] if tap.netns is not None else []
    linktype = ["-y", tap.linktype] if tap.linktype is not None else []
    if fmt == "pcap":
        # -U with --immediate-mode: each packet reaches the file as it arrives. Immediate
        # mode gives every packet a snaplen-sized ring slot, so the default 2 MiB ring
        # holds 8 packets and bursts get dropped: -B gives it room (KiB).
        # -Z root: keep writing as root (tcpdump drops privileges by default).
        args = ["tcpdump", "-i", tap.interface, "-n", "-U", "--immediate-mode", "-Z", "root"]
        args += ["-B", str(RING_KIB), *linktype]
        return [*where, *args, "-s", str(snaplen), "-w", str(path), bpf], "listening on"
    # dumpcap prints "File: …" once the interface is open and the file header is written.
    args = ["dumpcap", "-i", tap.interface, *linktype, "-s", str(snaplen), "-f", bpf]
    return [*where, *args, "-w", str(path)], "File: "


class _StderrWatch:
    """Drains the tool's stderr in a thread (a full pipe would stall it) and keeps the text."""

    def __init__(self, process: subprocess.Popen[str], ready_text: str) -> None:
        self.text = ""
        self.ready = threading.Event()
        self._ready_text = ready_text
        self._thread = threading.Thread(target=self._drain, args=(process,), daemon=True)
        self._thread.start()

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.text += line
            if self._ready_text in line:
                self.ready.set()
        self.ready.set()  # EOF: the tool ended (the caller checks whether it is running)

    def join(self) -> None:
        self._thread.join(timeout=5)


def _wait_until_quiet(path: Path, fmt: Format) -> None:
    """Lets the last packets (FIN/RST/ACK, delayed ACKs ≤ 200 ms) reach the file.

    tcpdump writes every packet at once, so its file stops growing; dumpcap buffers its
    writes and reads the kernel ring every 250 ms, so it gets a fixed second.
    """
    if fmt == "pcapng":
        time.sleep(1.0)
        return
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 0.5:
        time.sleep(0.05)
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, quiet_since = size, time.monotonic()


def _dropped(stderr: str) -> int:
    """Packets the kernel dropped, from the tool's closing statistics."""
    tcpdump = re.search(r"(\d+) packets? dropped by kernel", stderr)
    dumpcap = re.search(r"Packets received/dropped on interface .*: \d+/(\d+)", stderr)
    return sum(int(m.group(1)) for m in (tcpdump, dumpcap) if m)


@contextmanager
def capturing(
    path: Path, fmt: Format, bpf: str, snaplen: int = SNAPLEN, tap: Tap = LOOPBACK
) -> Iterator[Path]:
    """Runs the capture tool around the block; returns once the file is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    command, ready_text = _command(path, fmt, bpf, snaplen, tap)
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    watch = _StderrWatch(process, ready_text)
    try:
        if not watch.ready.wait(READY_TIMEOUT) or process.poll() is not None:
            raise CaptureError(f"{command[0]} did not start: {watch.text.strip()}")
        yield path
        _wait_until_quiet(path, fmt)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # both tools finish the file on SIGINT
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        watch.join()
        if process.stderr is not None:
            process.stderr.close()
    if process.returncode != 0:
        raise CaptureError(f"{command[0]} exited with {process.returncode}: {watch.text.strip()}")
    dropped = _dropped(watch.text)
    if dropped:
        raise CaptureError(f"{command[0]} lost {dropped} packets: {watch.text.strip()}")
    path.chmod(0o644)


def capture_scenario(
    scenario: Scenario, out_path: Path, fmt: Format, snaplen: int = SNAPLEN
) -> Recorder:
    """Runs the scenario under a capture and checks that every byte sent was captured."""
    with capturing(out_path, fmt, capture_filter(scenario), snaplen):
        recorder = run_scenario(scenario)
    if snaplen >= SNAPLEN:
        problems = missing_data(read_segments(out_path), recorder)
        if problems:
            raise CaptureError(f"{out_path}: capture incomplete: " + "; ".join(problems[:5]))
    return recorder


def truth_path_for(capture_path: Path) -> Path:
    """`X.pcap` / `X.pcapng` -> `X.truth.json`."""
    return capture_path.with_suffix(".truth.json")


def emulate_and_capture(
    scenario: Scenario,
    out_path: str | Path,
    fmt: Format | None = None,
    snaplen: int = SNAPLEN,
) -> tuple[Path, Path]:
    """Captures one scenario to `out_path` and writes its ground truth beside it."""
    capture_path = Path(out_path)
    fmt = fmt or ("pcapng" if capture_path.suffix == ".pcapng" else "pcap")
    recorder = capture_scenario(scenario, capture_path, fmt, snaplen)
    truth_path = truth_path_for(capture_path)
    recorder.write_truth(truth_path)
    return capture_path, truth_path
