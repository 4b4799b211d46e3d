"""TensorFlow's start-up noise on a CPU-only host (tasks/core/tfquiet.py): the stderr of a process
that goes through the product to TensorFlow holds no cuInit, cuda-driver or absl lines; they are
in the debug log; other stderr lines pass through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.tfquiet import NOISE, gpu_visible

REPO = Path(__file__).resolve().parents[2]
CPU_RUN = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
{prelude}
import numpy as np
from tasks.train.models import build_model
model = build_model("seed_cnn", (32, 32, 3), 10)
print("probs", model.predict_on_batch(np.zeros((2, 32, 32, 3), np.float32)).shape)
"""


def _run(prelude: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-c", CPU_RUN.format(prelude=prelude)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.subprocess
@pytest.mark.skipif(gpu_visible(), reason="a GPU is visible: TensorFlow's start-up lines are left as they are")
def test_a_cpu_run_prints_no_cuinit_lines():
    r = _run("")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "probs (2, 10)" in r.stdout
    assert not [line for line in r.stderr.splitlines() if NOISE.search(line)], r.stderr
    assert "cuInit" not in r.stderr and "E0000" not in r.stderr
    # kept at debug level: what TensorFlow said before its logging started is in the log
    assert "tasks.core.tfquiet DEBUG tensorflow:" in r.stdout


@pytest.mark.subprocess
def test_held_stderr_passes_other_lines_through():
    code = ("import os, sys, logging\n"
            "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)\n"
            "from tasks.core.tfquiet import held_stderr\n"
            "with held_stderr():\n"
            "    os.write(2, b'E0000 00:00 cuda_platform.cc:52] failed call to cuInit: CUDA error\\n')\n"
            "    os.write(2, b'a real problem\\n')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "a real problem\n"
    assert "failed call to cuInit" in r.stdout  # at debug level


def test_install_respects_a_log_level_the_user_set():
    from tasks.core.tfquiet import install

    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    install(env)
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "0"}
