"""`deal-client` with one image's decode held at a gate, for tests that act at a known point.

    python tests/gated_client.py GATE RELEASE deal-client-args...

Decoding the pool file whose name is GATE waits until the file RELEASE exists, so the run cannot
finish before the test acts, whatever the machine's speed: with one decode worker, every image
before GATE is scored first and nothing after it is.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import dealseg.client.logs as logs
from dealseg.client.cli import main
from dealseg.core.decode import Frame


def gated(gate: str, release: Path):  # -> the decode function with the gate
    decode = logs.decode_frame

    def decode_frame(path: str, size: tuple[int, int], max_pixels: int, resize: str) -> Frame:
        if os.path.basename(path) == gate:
            while not release.exists():
                time.sleep(0.01)  # waiting for a condition, not for time to pass
        return decode(path, size, max_pixels, resize)

    return decode_frame


if __name__ == "__main__":
    # Ctrl-C raises KeyboardInterrupt even when the test runner was started with SIGINT ignored
    # (as background jobs of a shell are), which this process would otherwise inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logs.decode_frame = gated(sys.argv[1], Path(sys.argv[2]))  # what decode_any reads with
    main(sys.argv[3:])
