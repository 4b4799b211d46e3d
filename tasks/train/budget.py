"""``training.budget``: a recipe's epochs chosen for this machine, so that its run takes no longer
than the notebook's own training would here.

``budget: 20`` reads "no longer than the notebook's 20 epochs on this machine". The recipe's
schedule (warm-up and decay, lookahead, the stem bias's freeze) is laid over the epochs that
fit; ``training.epochs`` stays the most it may take. Machines differ by 3x and more for the
same recipe (bf16 cores or not, AMX, a GPU), so a fixed epoch count is right on one of them only.

How the epochs are found, once per machine and setting, inside the training slot (nothing else
trains meanwhile):
  - a few training steps and evaluation steps of the notebook's model (``seed_cnn``, RMSprop, batch
    32, float32) and of the recipe's model (its batch, precision and kernels, as it will train)
    are timed on images of the dataset, after their functions are traced. The notebook's steps
    are timed on one prepared batch, the fastest way to feed them, so the notebook's epoch is
    never overestimated and a budget never overruns: on a 2-core AVX2 host it estimated 65.6 s
    where the notebook's own ``fit`` took 81.3 s, and chose 5 epochs where 7 would have fit
    (timing the notebook's own ``fit`` on ~100 steps overestimated it instead, 98-102 s);
  - notebook epoch = its training steps over the training rows + its validation pass over the test
    split (the notebook validated on it every epoch);
  - recipe epoch = its training steps (+ its validation pass when ``recipe.validate`` is "every");
    recipe's fixed cost = its tracing + the test-time-augmented scoring of the test split;
  - epochs = floor((budget x notebook epoch - fixed cost) / recipe epoch), within [1, epochs].

The measurement is kept in ``<data_dir>/calibration/<key>.json`` (the key: this machine's CPU model,
flags and cores, its GPUs, TensorFlow's version, and the setting) and reused, so a machine always
picks the same epochs and a rerun reuses its model; delete the file to measure again. The train
key covers the machine (``host_facts``) and the budget, never the timings' noise. The epochs
chosen are written into the training's work dir before it fits, so a run resumed after a kill
finishes the schedule it started.
"""

from __future__ import annotations

import dataclasses
import gc
import glob
import importlib.metadata
import math
import os
import shutil
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tasks.core.errors import CifarError
from tasks.core.files import atomic_write_json
from tasks.core.guards_files import read_regular
from tasks.core.hashing import stable_hash, to_jsonable
from tasks.core.jsonbound import loads_bounded
from tasks.core.logs import get_logger
from tasks.train.config import OptimizerConfig, TrainingConfig, TrainingError

NOTEBOOK_BATCH = 32
CALIBRATION = "calibration"  # the folder under data_dir
CHOSEN = "budget.json"  # the epochs chosen, in the training's work dir
# CPU flags that change how fast TensorFlow trains (vector width, bf16, AMX, VNNI).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
TTA_VIEWS = {"multi": 6, "mirror": 2, "off": 1}
MAX_BYTES, MAX_DEPTH = 64 * 1024, 8  # what these two small files may be when read back


def _read(path: Path) -> tuple[Any, str | None]:
    """(content, None), or (None, why not) for a missing, oversized, special or malformed file."""
    try:
        return loads_bounded(read_regular(path, MAX_BYTES, what="budget file"), MAX_BYTES, MAX_DEPTH), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, CifarError) as exc:
        return None, str(exc)


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def calibration_problems(cal: Any) -> list[str]:
    """Why a calibration file cannot be used (empty: it can)."""
    if not isinstance(cal, dict):
        return ["not a JSON object"]
    out = []
    for part in ("notebook", "recipe"):
        times = cal.get(part)
        if not isinstance(times, dict):
            out.append(f"{part}: missing")
            continue
        out += [f"{part}.{k}: expected seconds >= 0, got {times.get(k)!r}" for k in ("train_step", "eval_step", "trace")
                if not _seconds(times.get(k))]
    return out


def host_facts(cpuinfo: str | None = None) -> dict[str, Any]:
    """What makes a training faster or slower on this machine, read without TensorFlow: the CPU's
    model and speed flags, the cores this process may use, the GPUs it sees, TensorFlow's version."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name" and not model:
            model = value.strip()
        elif name.strip() == "flags" and not flags:
            flags = set(value.split())
    gpus = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            text = Path(info).read_text(errors="replace")
        except OSError:
            continue
        gpus += [ln.partition(":")[2].strip() for ln in text.splitlines() if ln.startswith("Model:")]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        tf_version = importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        tf_version = None
    return {"cpu": model, "flags": sorted(f for f in SPEED_FLAGS if f in flags), "cores": cores,
            "gpus": gpus, "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "tensorflow": tf_version}


def calibration_key(model_name: str, cfg: TrainingConfig, input_shape, n_train: int, n_test: int) -> str:
    """Which measurement a training can reuse: same machine, model, recipe, batch, precision and
    XLA settings, image shape and split sizes."""
    setting = dataclasses.replace(cfg, epochs=1, seed=0, budget=None)  # neither changes a step's time
    return stable_hash("calibration", host_facts(), model_name, setting, list(input_shape), n_train, n_test)


def epochs_within(budget: float, notebook_epoch: float, recipe_epoch: float, fixed: float, most: int) -> int:
    """The most whole recipe epochs that fit ``budget`` notebook epochs after the fixed cost;
    never fewer than 1 nor more than ``most``."""
    if recipe_epoch <= 0:
        return most
    fit = math.floor((budget * notebook_epoch - fixed) / recipe_epoch)
    return max(1, min(most, fit))


def _time_steps(model, x, y, batch: int, steps: int) -> dict[str, float]:
    """Median seconds of a training step, mean of an evaluation step, and the seconds the first
    call of each took (tracing), on one batch of ``x``/``y`` repeated."""
    import keras
    import tensorflow as tf

    data = tf.data.Dataset.from_tensors((x[:batch], y[:batch])).repeat()
    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_batch_end(self, b, logs=None):
            stamps.append(time.perf_counter())

    t = time.perf_counter()
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    model.evaluate(data, steps=1, verbose=0)
    trace = time.perf_counter() - t
    model.fit(data, steps_per_epoch=steps + 1, epochs=1, verbose=0, shuffle=False, callbacks=[Stamp()])
    step = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    t = time.perf_counter()
    model.evaluate(data, steps=steps, verbose=0)
    return {"train_step": step, "eval_step": (time.perf_counter() - t) / steps, "trace": trace}


def _batch_of(dataset, rows, stats: dict[str, Any], size: int, num_classes: int):
    """``size`` training images (the first training rows, repeated when there are fewer),
    scaled as the model sees them, and their one-hot labels."""
    import numpy as np

    from tasks.core.datacache import load_dataset
    from tasks.core.pixels import one_hot, scale_pixels

    data = load_dataset(dataset.path)
    pick = np.sort(np.resize(np.asarray(rows)[: max(size, 1)], size))
    x = scale_pixels(np.asarray(data.x_train[pick]), stats["mean"], stats["std"])
    return np.asarray(x), np.asarray(one_hot(np.asarray(data.y_train[pick]), num_classes))


def calibrate(model_name: str, dataset, cfg: TrainingConfig, runtime, strategy, stats: dict[str, Any],
              rows, steps: int = 6) -> dict[str, Any]:
    """Time the notebook's model and the recipe's on this machine (see the module's docstring)."""
    from tasks.core.kernels import fused_kernels
    from tasks.train.devices import precision_policy
    from tasks.train.fit import compiled_model, make_optimizer
    from tasks.train.models import build_model

    train_rows = rows[0]
    with precision_policy("float32"):  # the notebook's: float32, its optimizer, batch 32
        notebook = build_model("seed_cnn", dataset.input_shape, dataset.num_classes)
        notebook.compile(optimizer=make_optimizer(OptimizerConfig()), loss="categorical_crossentropy",
                         metrics=["accuracy"])
        x, y = _batch_of(dataset, train_rows, {"mean": None, "std": None}, NOTEBOOK_BATCH, dataset.num_classes)
        nb = _time_steps(notebook, x, y, NOTEBOOK_BATCH, steps * 4)  # its steps are short: time more
    del notebook
    with precision_policy(runtime.precision):
        model = compiled_model(model_name, dataset, cfg, runtime, strategy, stats, train_rows)
        x, y = _batch_of(dataset, train_rows, stats, cfg.batch_size, dataset.num_classes)
        with nullcontext() if runtime.xla else fused_kernels(model):
            rc = _time_steps(model, x, y, cfg.batch_size, steps)
    del model
    gc.collect()
    return {"notebook": nb, "recipe": rc, "steps_timed": steps, "host": host_facts(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def plan(cal: dict[str, Any], cfg: TrainingConfig, n_train: int, n_val: int, n_test: int) -> dict[str, Any]:
    """The epoch arithmetic of the module's docstring, from a calibration: every term, in seconds."""
    nb, rc = cal["notebook"], cal["recipe"]
    notebook_epoch = (math.ceil(n_train / NOTEBOOK_BATCH) * nb["train_step"]
                      + math.ceil(n_test / NOTEBOOK_BATCH) * nb["eval_step"])
    recipe = cfg.recipe
    recipe_epoch = max(1, n_train // cfg.batch_size) * rc["train_step"]
    if recipe is not None and recipe.validate == "every":
        recipe_epoch += math.ceil(n_val / cfg.batch_size) * rc["eval_step"]
    views = TTA_VIEWS.get(recipe.tta if recipe is not None else "off", 1)
    fixed = rc["trace"] + views * math.ceil(n_test / cfg.batch_size) * rc["eval_step"]
    epochs = epochs_within(cfg.budget, notebook_epoch, recipe_epoch, fixed, cfg.epochs)
    return {"budget_notebook_epochs": cfg.budget, "notebook_epoch_seconds": round(notebook_epoch, 2),
            "recipe_epoch_seconds": round(recipe_epoch, 2), "recipe_fixed_seconds": round(fixed, 2),
            "epochs": epochs, "most_epochs": cfg.epochs,
            "estimated_seconds": round(fixed + epochs * recipe_epoch, 1),
            "budget_seconds": round(cfg.budget * notebook_epoch, 1)}


def resolve(cfg: TrainingConfig, model_name: str, dataset, runtime, strategy, stats: dict[str, Any], rows,
            data_dir, work: Path) -> tuple[TrainingConfig, dict[str, Any]]:
    """``cfg`` with the epochs that fit its budget on this machine, and the facts of the choice
    (for train.json and the log). A choice already written into ``work`` (a resumed training)
    stands; else the machine's calibration is read, or made and kept."""
    if cfg.budget is None:
        return cfg, {}
    if runtime.strategy == "multi_worker":
        raise TrainingError("training.budget picks epochs from this machine's speed, and the workers of a "
                            "cluster could pick differently; set training.epochs (and no budget) for "
                            "multi-worker training")
    log = get_logger()
    chosen = work / CHOSEN
    if chosen.exists():
        facts, why = _read(chosen)
        epochs = facts.get("epochs") if isinstance(facts, dict) else None
        if isinstance(epochs, int) and not isinstance(epochs, bool) and 1 <= epochs <= cfg.epochs:
            log.info("training.budget: resuming with the %d epochs chosen when this training started", epochs)
            return dataclasses.replace(cfg, epochs=epochs), facts
        # Its schedule is unknown: a backup made under it cannot be resumed consistently.
        log.warning("training.budget: %s is unusable (%s); this training starts over", chosen,
                    why or f"epochs: expected a whole number within [1, {cfg.epochs}], got {epochs!r}")
        shutil.rmtree(work, ignore_errors=True)
    n_train, n_val, n_test = len(rows[0]), len(rows[1]), dataset.test_size
    path = Path(data_dir) / CALIBRATION / (calibration_key(model_name, cfg, dataset.input_shape, n_train, n_test)
                                           + ".json")
    cal, why = _read(path)
    if cal is not None and (problems := calibration_problems(cal)):
        why, cal = "; ".join(problems), None
    if cal is None:
        if why != "missing":
            log.warning("training.budget: the calibration %s is unusable (%s); measuring again", path, why)
        log.info("training.budget: timing the notebook's model and %s on this machine (once; kept in %s)",
                 model_name, path)
        cal = to_jsonable(calibrate(model_name, dataset, cfg, runtime, strategy, stats, rows))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, cal)
    facts = {**plan(cal, cfg, n_train, n_val, n_test), "calibration": str(path)}
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(chosen, facts)
    log.info("training.budget %s notebook epochs on this machine: %.0f s (a notebook epoch %.1f s); %s epochs "
             "of %.1f s + %.0f s of tracing and scoring fit it: training %d of at most %d epochs",
             f"{cfg.budget:g}", facts["budget_seconds"], facts["notebook_epoch_seconds"], model_name,
             facts["recipe_epoch_seconds"], facts["recipe_fixed_seconds"], facts["epochs"], cfg.epochs)
    return dataclasses.replace(cfg, epochs=facts["epochs"]), facts
