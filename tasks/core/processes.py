"""Whether a process is alive, for the sweepers of what a dead writer left behind (a dot-named
temp file or folder with its pid in the name). Its own module: ``tasks.core.files`` is in every
stage's import closure, so a change there changes every cache key."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user's counts): the
    owner of a dot-named temp file or folder left behind, before it is swept."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
