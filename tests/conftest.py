"""Shared test helpers.

Tests that need an outside tool (tshark, tcpdump, nft, root) skip with a visible reason on
a machine that lacks it; in CI (CI=true) a missing tool is a failure, and so is any skip,
so the suite can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"


def require(tool: str) -> str:
    """Path of `tool`, or skip (fail in CI) when it is not installed."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed"
        if IN_CI:
            pytest.fail(f"{message} (CI must install it)")
        pytest.skip(message)
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI must run as root (network namespaces, nftables, capture)")
        pytest.skip("needs root")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failed promise: turn any skip into a failing run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if IN_CI and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {skipped} test(s) skipped; skips are failures in CI", red=True)
        session.exitstatus = 1
