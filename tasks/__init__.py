"""Stage modules of the CIFAR-10 pipeline: pure functions first, thin Prefect tasks last.

download -> prepare (scale, one-hot, validate) -> train -> store (save, register) -> report
"""

from tasks.core import tfquiet as _tfquiet

_tfquiet.install()  # before anything imports TensorFlow: no cuInit lines on CPU-only hosts
