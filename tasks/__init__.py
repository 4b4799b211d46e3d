"""Stage modules of the CIFAR-10 pipeline: pure functions first, thin Prefect tasks last.

download -> prepare (scale, one-hot, validate) -> train -> store (save, register) -> report
"""
