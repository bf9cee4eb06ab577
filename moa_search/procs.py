"""Is a process still there? One answer for everything that must tell a live owner from a dead
one: call-store claims, trials of killed workers, llama.cpp servers another command started."""

from __future__ import annotations

import os
import socket

__all__ = ["HOST", "pid_alive"]

#: This machine's name, as claims and trial stamps record it: a pid means something only here.
HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists on this machine (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
