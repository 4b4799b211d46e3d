"""Where and in which number format training runs: the "auto" settings resolved for this
machine (GPU: mixed_float16 + XLA; CPU: float32), the ``tf.distribute`` strategy, this process's
role in a multi-worker cluster, and the Keras precision policy for the length of a training.

Multi-worker training (``strategy: multi_worker``): start the same flow on every machine with
``TF_CONFIG`` set per process, e.g. ``{"cluster": {"worker": ["host1:12345", "host2:12345"]},
"task": {"type": "worker", "index": 0}}`` (index 0 is the chief, which alone writes the model);
``data_dir`` must be a shared folder or the chief's. ``batch_size`` is the global batch.
With a Prefect work pool, deploy the flow once per worker with its own TF_CONFIG in the job
variables (``job_variables={"env": {"TF_CONFIG": ...}}``) and run them together.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasks.train.config import TrainingConfig, TrainingError


@dataclass(frozen=True)
class Runtime:
    strategy: str  # one_device | mirrored | multi_worker
    precision: str  # float32 | mixed_float16 | mixed_bfloat16
    xla: bool
    gpus: int


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU features that make bfloat16 math fast


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (``avx512_bf16`` or ``amx_bf16`` among the
    flags of /proc/cpuinfo); elsewhere bf16 is emulated and slower than float32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in BF16_FLAGS)


def resolve_runtime(cfg: TrainingConfig, gpus: int, bf16_cpu: bool | None = None) -> Runtime:
    """Turn the "auto" settings into concrete ones for a machine with ``gpus`` GPUs.

    GPU: mixed_float16 + XLA; CPU: float32, no XLA, except the airbench recipe
    (``training.recipe``) on a CPU with native bf16 (``cpu_has_bf16``), which gets
    mixed_bfloat16 (1.7x faster there, same accuracy). More than one GPU: mirrored.
    """
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "mirrored" if gpus > 1 else "one_device"
    cpu_auto = "float32"
    if not gpus and cfg.recipe is not None and cfg.mixed_precision == "auto":
        cpu_auto = "mixed_bfloat16" if (cpu_has_bf16() if bf16_cpu is None else bf16_cpu) else "float32"
    precision = {"auto": "mixed_float16" if gpus else cpu_auto, "off": "float32"}.get(
        cfg.mixed_precision, cfg.mixed_precision)
    xla = {"auto": gpus > 0, "on": True, "off": False}[cfg.xla]
    return Runtime(strategy=strategy, precision=precision, xla=xla, gpus=gpus)


def read_tf_config() -> dict[str, Any] | None:
    """The ``TF_CONFIG`` environment variable, parsed (None when unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        conf = json.loads(raw)
    except ValueError as exc:
        raise TrainingError(f"TF_CONFIG is not valid JSON ({exc}): {raw[:200]!r}") from exc
    if problem := _tf_config_problem(conf):
        raise TrainingError(f"TF_CONFIG {problem}: {raw[:200]!r}. It should look like "
                            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                            '"task": {"type": "worker", "index": 0}}')
    return conf


def _tf_config_problem(conf: Any) -> str | None:
    """What is wrong with a parsed TF_CONFIG's shape (None: nothing), so that the code reading
    its cluster and task can trust them."""
    if not isinstance(conf, dict):
        return f"is a JSON {type(conf).__name__}, not an object"
    cluster, task = conf.get("cluster", {}), conf.get("task", {})
    if not isinstance(cluster, dict) or not all(
            isinstance(v, list) and all(isinstance(a, str) for a in v) for v in cluster.values()):
        return "has a cluster that is not an object of lists of \"host:port\" strings"
    if not isinstance(task, dict):
        return f"has a task that is a JSON {type(task).__name__}, not an object"
    kind, index = task.get("type", "worker"), task.get("index", 0)
    if not isinstance(kind, str) or not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return f"has task type {kind!r} and index {index!r}: a name and a whole number >= 0 are needed"
    if kind in cluster and index >= len(cluster[kind]):
        return f"has task {kind} {index}, but its cluster lists {len(cluster[kind])} {kind}(s)"
    return None


def worker_role(strategy: str) -> tuple[bool, str]:
    """(is_chief, label) of this process: always chief unless multi_worker says otherwise."""
    if strategy != "multi_worker":
        return True, "chief"
    conf = read_tf_config()
    if not conf or "cluster" not in conf or "task" not in conf:
        raise TrainingError(
            "training.strategy is multi_worker but TF_CONFIG is not set (or lacks cluster/task). "
            'Set it per process, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\', or use strategy: auto.')
    kind, index = conf["task"].get("type", "worker"), int(conf["task"].get("index", 0))
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in conf["cluster"])
    return chief, f"{kind}-{index}"


def allow_memory_growth() -> list[str]:
    """Let every visible GPU's memory grow as needed instead of TensorFlow taking nearly all of it
    at start (so downloads, scoring or a waiting process can still use the device). Call before
    anything touches the GPUs; returns the GPUs set (none on a CPU machine)."""
    import tensorflow as tf

    done = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
            done.append(gpu.name)
        except RuntimeError:  # this process already initialised the device: the setting stands as it is
            pass
    return done


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _addresses_here(conf: dict[str, Any], hostnames: tuple[str, ...]) -> list[tuple[str, int]]:
    """The (task type, index) of each process of TF_CONFIG's cluster on this machine (its loopback
    addresses or ``hostnames``), the chief first, then the workers in order."""
    hosts = {h.lower() for h in (*LOCAL_HOSTS, *hostnames)}
    return [(kind, i) for kind in ("chief", "worker")
            for i, address in enumerate((conf.get("cluster") or {}).get(kind) or [])
            if str(address).rsplit(":", 1)[0].lower() in hosts]


def local_workers(conf: dict[str, Any] | None, hostnames: tuple[str, ...] = ()) -> int:
    """How many processes of TF_CONFIG's cluster run on this machine: its loopback addresses
    or ``hostnames`` (this machine's names). Each of them needs a training slot here."""
    return max(len(_addresses_here(conf, hostnames)), 1) if conf else 1


def takes_local_slots(conf: dict[str, Any] | None, hostnames: tuple[str, ...] = ()) -> bool:
    """Whether this process takes the training slots of every process of its cluster on this
    machine (``local_workers`` of them, all at once): the first of those processes does, the
    others take none. Taken one per process, two clusters could each hold half of the slots
    and wait for the other half forever. A process outside any cluster, or one whose own address
    is not among this machine's, takes its own."""
    here = _addresses_here(conf, hostnames) if conf else []
    task = (conf or {}).get("task") or {}
    me = (task.get("type", "worker"), int(task.get("index", 0)))
    return not here or me not in here or here[0] == me


def make_strategy(runtime: Runtime):
    """The ``tf.distribute`` strategy for ``runtime``. Call it before anything else touches
    TensorFlow's devices: a multi-worker strategy must configure TF before it starts."""
    import tensorflow as tf

    if runtime.strategy == "multi_worker":

        class MultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15's fit() under this strategy calls strategy.reduce on (x, y) tuples (the
            # collective strategy reduces one value at a time) and on scalar metrics with
            # axis=0 (invalid for a scalar). Reduce part by part; scalars across replicas only.
            def reduce(self, reduce_op, value, axis):
                parent = super()

                def reduce_one(v):
                    local = self.experimental_local_results(v)[0]
                    scalar = getattr(local, "shape", None) is not None and local.shape.rank == 0
                    return parent.reduce(reduce_op, v, None if scalar else axis)

                return tf.nest.map_structure(reduce_one, value)

        return MultiWorker()
    if runtime.strategy == "mirrored":
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    # one_device: TensorFlow's default strategy (no distribution wrapper, no per-step overhead);
    # it places the model on the first GPU when there is one.
    return tf.distribute.get_strategy()


def strategy_devices(strategy, runtime: Runtime) -> list[str]:
    """The devices this process trains on."""
    if runtime.strategy != "one_device":
        return list(strategy.extended.worker_devices)
    return ["/device:GPU:0" if runtime.gpus else "/device:CPU:0"]


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Keras's global dtype policy set to ``precision`` inside the block, restored after it."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
