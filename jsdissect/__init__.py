"""jsdissect: offline analyzer for JobScheduler 1.x remote-execution traffic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jsdissect import native

__version__ = "0.1.0"
__all__ = ["__version__", "analyze"]

native.install()  # before any compiled module is imported: which of them run

if TYPE_CHECKING:
    from jsdissect.pipeline import Analysis


def analyze(paths: Any, **options: Any) -> Analysis:
    """Analyze capture files as one timeline; see `jsdissect.pipeline.analyze`.

    Imported lazily so `jsdissect --version` and `--help` stay fast.
    """
    from jsdissect.pipeline import analyze as run

    return run(paths, **options)
