"""Fault points: named steps where the fault-matrix tests stop a real run to kill it there.

``CIFAR_FAULT_POINT=<name>`` in a process's environment makes ``reached(name)`` print
``fault point <name> reached`` to stderr and then wait (at most ``HOLD_SECONDS``) for the signal
the test sends: ``kill -9``, SIGTERM or Ctrl-C to the process group. Nothing else changes; with
the variable unset, as in every real run, ``reached`` is one dictionary lookup. The points
(docs/reliability.md, "The fault matrix", and tests/test_fault_matrix.py):

    download.mid-stream      the archive's first bytes are in its .part file
    decode.before-publish    the dataset cache is written in its temp folder, not yet renamed
    validate.before-record   the checks ran, their summary is not yet written
    fit.mid-epoch            the second epoch's first batch is done
    save.before-registry     the run folder is published, registry.json not yet updated
    save.after-registry      registry.json is updated, old runs not yet pruned
    report.before-write      the report is rendered, not yet written
    score.before-publish     batch scoring's outputs are written in a temp folder, not yet renamed
"""

from __future__ import annotations

import os
import sys
import time

ENV = "CIFAR_FAULT_POINT"
HOLD_SECONDS = 600.0


def armed(point: str) -> bool:
    """Whether this process is to hold at ``point``: for hooks that only exist to reach it (a
    per-batch Keras callback costs every training step, so it is added only then)."""
    return os.environ.get(ENV) == point


def reached(point: str) -> None:
    """Hold here when the environment names ``point`` (a test is about to signal this process)."""
    if not armed(point):
        return
    sys.stderr.write(f"fault point {point} reached (pid {os.getpid()})\n")
    sys.stderr.flush()
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:  # sleep in short steps: a signal ends the wait at once
        time.sleep(0.1)
