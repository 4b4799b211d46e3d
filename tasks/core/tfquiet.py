"""TensorFlow's start-up noise, silenced on hosts without a GPU and kept at debug level.

On a CPU-only machine every process that imports TensorFlow prints, twice, lines like
``E0000 ... failed call to cuInit: ... CUDA error``, ``Could not find cuda drivers``, absl's
"All log messages before absl::InitializeLog()" and the CPU-feature notice: none of them is the
user's business there. ``install()`` (run by ``tasks/__init__.py``, before anything imports
TensorFlow) does two things, only when no GPU is visible (no ``/dev/nvidia*`` device and no
``nvidia-smi``):

1. sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the environment already sets it (set it to 0 to see
   everything), which silences TensorFlow's C++ logging after its start;
2. holds the process's stderr (file descriptor 2) while ``tensorflow`` is first imported: the
   lines printed before TensorFlow's logging starts matching ``NOISE`` go to the
   ``tasks.core.tfquiet`` logger at DEBUG, every other line back to stderr.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile

NOISE = re.compile(r"absl::InitializeLog|cudart_stub|cuda drivers|cuInit|cuda_platform|cpu_feature_guard|"
                   r"To enable the following instructions|rebuild TensorFlow with|oneDNN custom operations|"
                   r"TF_ENABLE_ONEDNN_OPTS|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer")
log = logging.getLogger(__name__)


def gpu_visible() -> bool:
    """A GPU this process could use: an NVIDIA device node or ``nvidia-smi`` on the PATH."""
    return bool(glob.glob("/dev/nvidia*")) or shutil.which("nvidia-smi") is not None


@contextlib.contextmanager
def held_stderr():
    """Everything written to file descriptor 2 meanwhile (C++ included): noise to the debug
    log, the rest back to stderr, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
                if NOISE.search(line):
                    log.debug("tensorflow: %s", line.rstrip())
                else:
                    sys.stderr.write(line)
            sys.stderr.flush()


class _Existing(importlib.abc.Loader):
    """Hands the import system the module the quiet import already loaded."""

    def create_module(self, spec):
        return sys.modules[spec.name]

    def exec_module(self, module):
        pass


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports ``tensorflow`` (the first time anything asks) under ``held_stderr``."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders do the import below
        with held_stderr():
            module = importlib.import_module("tensorflow")
            # cuInit runs when the devices are first listed, not at import: do it while held
            module.config.list_physical_devices("GPU")
        return importlib.machinery.ModuleSpec(name, _Existing(), origin=getattr(module, "__file__", None))


def install(environ=None) -> bool:
    """Quiet TensorFlow's start on a host without a GPU; False (nothing changed) where a GPU is
    visible or TensorFlow is already imported."""
    environ = os.environ if environ is None else environ
    if "tensorflow" in sys.modules or gpu_visible():
        return False
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
    return True
