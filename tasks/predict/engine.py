"""Loading a run's serving model for scoring: its files checked against the sha256 recorded in
metadata.json first, then the flatbuffer opened with LiteRT (``ai_edge_litert``: imports in
~0.3 s, where TensorFlow takes ~6 s), or with TensorFlow's own copy of the interpreter where
LiteRT is not installed. The model takes raw uint8 images: its preprocessing is inside it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.guards_text import escape
from tasks.core.hashing import hash_file
from tasks.predict.errors import ModelFileError
from tasks.predict.resolve import ModelRef

SIGNATURE = "serving_default"
INPUT = "images"
# Batches of up to this many images are scored on one thread: LiteRT's other threads only cost
# CPU there (measured on 2 cores: one image 0.36 ms of CPU on one thread, 0.40-0.44 ms on two;
# no batch size scored faster on two).
SMALL_BATCH = 16


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # a platform without LiteRT wheels: TensorFlow's interpreter, slower to import
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


def verified_file(ref: ModelRef, name: str) -> Path:
    """The run's file ``name``, after checking its sha256 against metadata.json."""
    path = Path(ref.path) / name
    recorded = ref.sha256.get(name)
    if recorded is None or not path.is_file():
        what = "is missing" if not path.is_file() else "has no sha256 in metadata.json"
        raise ModelFileError(
            f"{path} {what}: run {ref.run_id} of {ref.pipeline} was saved before runs carried a "
            f"serving export, or the file was removed. To resolve this: `cifar run {ref.pipeline}` "
            "saves the trained model again with it (training is cached), or choose another run with --run.")
    actual = hash_file(path).sha256
    if actual != recorded:
        raise ModelFileError(
            f"{path}: sha256 {actual[:16]}... differs from {recorded[:16]}... recorded in "
            f"{Path(ref.path) / 'metadata.json'}; the file was altered or truncated after the run was saved, "
            "so it was not loaded. To resolve this: restore the run folder from a backup, or choose "
            "another run with --run (`cifar runs` lists them).")
    return path


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """LiteRT's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate" on the first run:
    send file descriptor 2 to /dev/null meanwhile (Python's own exceptions still propagate)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _signature_runner(model: Path, threads: int) -> tuple[Any, tuple[int, int, int]]:
    """The model's serving signature on an interpreter of ``threads`` threads, and its input shape."""
    interpreter = _interpreter_class()(model_path=str(model), num_threads=threads)
    shape = interpreter.get_input_details()[0]["shape_signature"]
    return interpreter.get_signature_runner(SIGNATURE), tuple(int(d) for d in shape[1:])


class Scorer:
    """A run's model, ready to score uint8 batches: ``probabilities(x)`` for ``x`` of shape
    (N, *input_shape). With ``threads`` > 1, batches of up to ``SMALL_BATCH`` images run on an
    interpreter of their own with one thread."""

    def __init__(self, ref: ModelRef, threads: int | None = None, quiet: bool = True):
        self.ref = ref
        classes_file = verified_file(ref, "classes.json")
        self.classes: list[str] = read_classes(classes_file)
        model = verified_file(ref, "model.tflite")
        threads = threads or os.cpu_count() or 1
        self._runner, self.input_shape = _signature_runner(model, threads)
        self._small = _signature_runner(model, 1)[0] if threads > 1 else self._runner
        # The first run sets up the CPU delegate. ``quiet`` hides its line by pointing file
        # descriptor 2 at /dev/null meanwhile: not in a service, whose other threads log there.
        with _quiet_native_stderr() if quiet else contextlib.nullcontext():
            out = self._run(np.zeros((1, *self.input_shape), np.uint8))
            if self._small is not self._runner:
                self._run(np.zeros((SMALL_BATCH + 1, *self.input_shape), np.uint8))
        if out.shape[-1] != len(self.classes):
            raise ModelFileError(
                f"{classes_file} names {len(self.classes)} classes but {model} has {out.shape[-1]} "
                f"outputs; the two files are not from one run. To resolve this: restore the run "
                f"folder, or choose another run with --run.")

    def _run(self, x: np.ndarray) -> np.ndarray:
        runner = self._small if len(x) <= SMALL_BATCH else self._runner
        out = runner(**{INPUT: np.ascontiguousarray(x, dtype=np.uint8)})
        return np.asarray(out["probabilities"], dtype=np.float32)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros((0, len(self.classes)), np.float32)
        return self._run(x)


MAX_CLASSES = 100_000
MAX_CLASS_NAME = 200  # characters


def read_classes(path: Path) -> list[str]:
    """classes.json: a list of distinct, non-empty names without control characters (they are
    printed and written into CSV files); ModelFileError naming the file and the bad value."""
    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{path}: {what}; classes.json must be a JSON list of distinct class names. "
                              "To resolve this: restore the run folder, or choose another run with --run.")

    try:
        names = json.loads(path.read_bytes()[: 64 << 20].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise bad(f"not valid UTF-8 JSON ({str(exc)[:100]})") from None
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_CLASSES:
        raise bad(f"expected a list of 1 to {MAX_CLASSES:,} names, got {type(names).__name__}"
                  + (f" of {len(names):,}" if isinstance(names, list) else ""))
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name or len(name) > MAX_CLASS_NAME or escape(name) != name:
            raise bad(f"entry {i} is {escape(repr(name))[:80]}, not a name of 1 to {MAX_CLASS_NAME} "
                      "printable characters")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise bad(f"{dup!r} is listed twice")
    return names
