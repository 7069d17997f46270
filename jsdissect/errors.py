"""The errors a capture that cannot be read raises, in a module of their own.

It crosses process boundaries (a Dask worker raises it, pickled back to the client), and
Dask pickles exceptions through tblib, which reads an exception's __dict__. A class in a
module compiled by mypyc has none: defined in `capture`, it could not be sent back, and
the client got a bare Exception, an internal error. This module stays Python.
"""

from __future__ import annotations


class CaptureError(Exception):
    """A capture file that cannot be read at all (missing, not a capture, unsupported)."""


class NoPacketYet(CaptureError):
    """A capture file that holds no packet, perhaps only yet: empty, or cut in its header
    (the newest file of a ring buffer being written). Beside other files it is skipped."""
