"""Coverage-guided fuzzing with atheris (libFuzzer), for long local runs; not a pytest module.

    pip install atheris
    python tests/fuzz_atheris.py capture -max_total_time=600 CORPUS_DIR captures/
    python tests/fuzz_atheris.py command -max_total_time=600
    python tests/fuzz_atheris.py objserver -max_total_time=600

`capture`: the input is a capture file, analyzed end to end (python engine, then every table
and writer); only CaptureError may escape. `command` / `objserver`: the input is split into
pieces for both directions and fed to the decoder; nothing may escape, and no DecodeError may
carry the decoders' "internal error" (a bug their safety net caught). A crash is saved by
libFuzzer as crash-<sha1>; keep it as a named regression test in tests/test_fuzz.py.
"""

from __future__ import annotations

import os
import sys
import tempfile

try:
    import atheris
except ImportError:
    sys.exit("fuzz_atheris.py needs atheris (not a dependency of the tests): pip install atheris")

with atheris.instrument_imports():
    import jsdissect
    from jsdissect.capture import CaptureError
    from jsdissect.protocol import DecodeError
    from jsdissect.protocol import command as cmd
    from jsdissect.protocol import objserver as api

# outputs after the instrumented imports, so that jsdissect is measured
sys.path.insert(0, os.path.dirname(__file__))
from outputs import exercise

FD, CAPTURE = tempfile.mkstemp(suffix=".pcap")
os.close(FD)


def capture(data: bytes) -> None:
    with open(CAPTURE, "wb") as f:
        f.write(data)
    try:
        result = jsdissect.analyze([CAPTURE], engine="python")
    except CaptureError:
        return
    exercise(result)


def decoder(data: bytes, make) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    dec = make()
    offsets = [0, 0]
    events = []
    while fdp.remaining_bytes():
        direction = fdp.ConsumeIntInRange(0, 1)
        if fdp.ConsumeIntInRange(0, 15) == 0:
            size = fdp.ConsumeIntInRange(1, 1 << 20)
            events += dec.gap(direction, offsets[direction], size, 0)
        else:
            piece = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 256))
            events += dec.feed(direction, offsets[direction], piece, 0)
            size = len(piece)
        offsets[direction] += size
    events += dec.close()
    for ev in events:
        if isinstance(ev, DecodeError) and "internal" in ev.reason:
            raise AssertionError(ev.reason)


TARGETS = {
    "capture": capture,
    "command": lambda data: decoder(data, lambda: cmd.CommandDecoder("Catheris")),
    "objserver": lambda data: decoder(data, lambda: api.ObjServerDecoder("Catheris")),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options] [corpus]")
    target = TARGETS[sys.argv.pop(1)]
    try:
        atheris.Setup(sys.argv, target)
        atheris.Fuzz()
    finally:
        os.unlink(CAPTURE)


if __name__ == "__main__":
    main()
