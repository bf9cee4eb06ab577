"""Waiting for a command started in a subprocess to print what a test needs (its URL)."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time


def wait_for_output(process: subprocess.Popen[str], pattern: str, timeout_s: float = 60.0
                    ) -> tuple[re.Match[str], str]:
    """The first match of ``pattern`` in ``process``'s stderr, and all the stderr read so far.

    The pipe's file descriptor is read, never ``readline()``: that would pull two lines into
    Python's buffer and return one, and ``select()`` on the descriptor would then never see the
    second, so a wait could hang (it did once the sim-server's banner wrapped at 80 columns).
    Raises ``AssertionError`` with what was read when the process exits or time runs out."""
    assert process.stderr is not None
    text = ""
    deadline = time.monotonic() + timeout_s
    while not (match := re.search(pattern, text)):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} from the command: {text}")
        if select.select([process.stderr], [], [], 0.2)[0]:
            text += os.read(process.stderr.fileno(), 65536).decode()
    return match, text
