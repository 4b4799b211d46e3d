"""One training's seeds, whatever else the process is doing.

Keras 3 draws every default seed (each initializer's, each Dropout's, the global
``SeedGenerator``'s) from Python's process-wide ``random`` module. Another thread drawing from it
meanwhile -- Prefect's own threads, a second training, a test -- shifts the draws, and the same
``training.seed`` builds a different model: measured here as a different first-epoch loss
(2.2997 vs 2.3196) for the same key on a loaded machine. ``seeded(seed)`` seeds Python, NumPy,
TensorFlow and Keras as ``keras.utils.set_random_seed`` does, and gives the calling thread a
``random.Random(seed)`` of its own for Keras's draws until it leaves: in a quiet process the
draws are the very ones ``set_random_seed`` alone gave, so the models are the same as before.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_mine = threading.local()


class _PerThread:
    """Stands in for the ``random`` module where Keras draws its default seeds: the calling
    thread's own generator inside ``seeded``, the process-wide one everywhere else."""

    def __getattr__(self, name: str):
        return getattr(getattr(_mine, "rng", None) or random, name)


def _install() -> None:
    """Route Keras's default-seed draws through ``_PerThread``: once per process, idempotent, and
    harmless if two threads do it at once (tests/train/test_train.py notices a Keras that draws
    them elsewhere: the same seed stops giving the same history while another thread draws)."""
    from keras.src.random import seed_generator  # the one place Keras 3 draws default seeds

    if hasattr(seed_generator, "python_random") and not isinstance(seed_generator.python_random, _PerThread):
        seed_generator.python_random = _PerThread()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed everything for one training in this thread (see the module's docstring)."""
    import keras

    _install()
    keras.utils.set_random_seed(seed)
    outer = getattr(_mine, "rng", None)
    _mine.rng = random.Random(seed)
    try:
        yield
    finally:
        _mine.rng = outer
