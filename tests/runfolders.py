"""Test helpers: run folders exactly in the store stage's format, without training anything.

``make_dataset`` writes a real dataset cache of synthetic images; ``make_run`` writes a complete
run folder (predictions from a seeded fake classifier, every metric computed from them, promotion
and registry decided as the store decides them). ``stub_run`` writes the few files the artifacts'
tables and the cluster's lookups read. ``two_pipelines`` and ``DAMAGES`` are the damaged-run-file
fixtures of issue 15. Used by tests/report, tests/core, tests/flows and bench/bench_report.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tasks.core.datacache import DatasetRecord, write_dataset_cache
from tasks.core.files import atomic_write_json, read_json
from tasks.core.hashing import hash_file, stable_hash
from tasks.core.registry import set_champion, write_registry

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The notebook's CNN as Keras 3 reports it (output shapes with the batch dim, params per layer).
NOTEBOOK_LAYERS = [
    ("conv2d", "Conv2D", [None, 32, 32, 32], 896), ("activation", "Activation", [None, 32, 32, 32], 0),
    ("conv2d_1", "Conv2D", [None, 30, 30, 32], 9248), ("activation_1", "Activation", [None, 30, 30, 32], 0),
    ("max_pooling2d", "MaxPooling2D", [None, 15, 15, 32], 0), ("dropout", "Dropout", [None, 15, 15, 32], 0),
    ("conv2d_2", "Conv2D", [None, 15, 15, 32], 9248), ("activation_2", "Activation", [None, 15, 15, 32], 0),
    ("conv2d_3", "Conv2D", [None, 13, 13, 32], 9248), ("activation_3", "Activation", [None, 13, 13, 32], 0),
    ("max_pooling2d_1", "MaxPooling2D", [None, 6, 6, 32], 0), ("dropout_1", "Dropout", [None, 6, 6, 32], 0),
    ("flatten", "Flatten", [None, 1152], 0), ("dense", "Dense", [None, 512], 590336),
    ("activation_4", "Activation", [None, 512], 0), ("dropout_2", "Dropout", [None, 512], 0),
    ("dense_1", "Dense", [None, 10], 5130), ("activation_5", "Activation", [None, 10], 0),
]


@dataclass(frozen=True)
class FakeRunRecord:  # the fields of store's RunRecord that the report task reads
    pipeline: str
    run_id: str
    path: str
    test_accuracy: float
    promoted: bool
    reason: str


# --------------------------------------------------------------------------- fixture builders
def make_dataset(data_dir: Path, n_test: int, n_train: int = 20, seed: int = 0,
                 x_test: np.ndarray | None = None, y_test: np.ndarray | None = None) -> DatasetRecord:
    """A real dataset cache. Synthetic images: a class-tinted gradient plus noise."""
    rng = np.random.default_rng(seed)

    def images(n):
        y = np.arange(n) % len(CLASSES)
        rng.shuffle(y)
        base = np.linspace(0, 1, 32)[None, :, None, None] * np.linspace(1, 0, 32)[None, None, :, None]
        tint = rng.uniform(0.2, 1.0, size=(len(CLASSES), 1, 1, 3))[y]
        x = 40 + 180 * base * tint + rng.normal(0, 18, size=(n, 32, 32, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)

    x_train, y_train = images(n_train)
    if x_test is None:
        x_test, y_test = images(n_test)
    fp = stable_hash("fake-dataset", n_train, len(x_test), seed)
    return write_dataset_cache(data_dir / "datasets" / fp, x_train, y_train, x_test, y_test, CLASSES,
                               {"source": str(data_dir / "fake.tar.gz"), "archive_sha256": "ab" * 32,
                                "format": "image-folder"})


def fake_predictions(y_true: np.ndarray, skill: float, seed: int):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, size=(len(y_true), len(CLASSES)))
    logits[np.arange(len(y_true)), y_true] += skill
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    return probs.argmax(1).astype(np.int64), probs


def metrics_from(y_true, y_pred, probs) -> dict:
    n = len(CLASSES)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = []
    for i, c in enumerate(CLASSES):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        precision = float(tp / predicted) if predicted else 0.0
        recall = float(tp / support) if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"class": c, "precision": precision, "recall": recall, "f1": f1,
                          "support": int(support)})
    loss = float(-np.mean(np.log(probs[np.arange(len(y_true)), y_true] + 1e-7)))
    return {"test_loss": loss, "test_accuracy": float(np.mean(y_true == y_pred)),
            "classes": list(CLASSES), "per_class": per_class, "confusion_matrix": cm.tolist()}


def make_run(artifacts_dir: Path, dataset: DatasetRecord, pipeline: str, created_at: datetime,
             skill: float = 2.0, epochs: int = 3, description: str = "", model: str = "seed_cnn",
             seconds_per_epoch: float = 40.0, seed: int = 0) -> Path:
    """A complete run folder exactly in the store stage's format; promotion and the registry are
    decided like store does (accuracy beats the champion's), from the runs already on disk."""
    from tasks.core.datacache import load_dataset

    y_true = np.asarray(load_dataset(dataset.path).y_test, dtype=np.int64)
    y_pred, probs = fake_predictions(y_true, skill, seed)
    metrics = metrics_from(y_true, y_pred, probs)
    acc, loss = metrics["test_accuracy"], metrics["test_loss"]
    run_id = created_at.strftime("%Y%m%d-%H%M%S-") + stable_hash(pipeline, seed, length=6)
    run_dir = artifacts_dir / pipeline / "runs" / run_id
    run_dir.mkdir(parents=True)

    rng = np.random.default_rng(seed + 1)
    history = []
    for e in range(1, epochs + 1):
        f = e / epochs
        history.append({"epoch": e, "loss": 2.3 - 1.5 * f * (loss < 2.3), "accuracy": min(0.995, acc * (0.4 + 0.7 * f)),
                        "val_loss": loss + (1 - f) * 0.8, "val_accuracy": acc * (0.55 + 0.45 * f),
                        "seconds": seconds_per_epoch * float(rng.uniform(0.9, 1.1))})
    history[-1].update(val_accuracy=acc, val_loss=loss)  # validation data = the test split
    atomic_write_json(run_dir / "history.json", {"epochs": history})
    (run_dir / "history.csv").write_text("epoch,loss,accuracy,val_loss,val_accuracy,seconds\n" + "".join(
        f"{h['epoch']},{h['loss']},{h['accuracy']},{h['val_loss']},{h['val_accuracy']},{h['seconds']}\n"
        for h in history))
    atomic_write_json(run_dir / "metrics.json", metrics)
    np.savez(run_dir / "predictions.npz", y_true=y_true, y_pred=y_pred, probs=probs)

    registry_path = artifacts_dir / pipeline / "registry.json"
    champ = (read_json(registry_path)["champion"] if registry_path.is_file() else None)
    runs = sorted((artifacts_dir / pipeline / "runs").glob("*/metadata.json"))
    previous = read_json(runs[-1])["run_id"] if runs else None
    prev_value = read_json(runs[-1].parent / "metrics.json")["test_accuracy"] if runs else None
    promoted = champ is None or acc > champ["value"]
    reason = ("first run of the pipeline" if champ is None else
              f"test_accuracy {acc:.4f} {'>' if promoted else '<='} champion's {champ['value']:.4f}")
    params = sum(p for *_, p in NOTEBOOK_LAYERS)
    config = {"name": pipeline, "description": description, "expect": "~0.70 in 20 epochs",
              "dataset": {"format": "image-folder"}, "prepare": {"standardize": False},
              "model": model, "training": {"epochs": epochs, "batch_size": 32},
              "promote": {"metric": "test_accuracy", "direction": "max", "min_delta": 0.0},
              "keep_last": None, "report": {"sample_images": 16, "confident_mistakes": 6},
              "schedule": None}
    training = {"key": "k" * 16, "model": model, "model_sha256": "cd" * 32, "epochs": epochs,
                "seconds": sum(h["seconds"] for h in history),
                "seconds_per_epoch": sum(h["seconds"] for h in history) / epochs,
                "devices": ["/physical_device:CPU:0"], "strategy": "one_device",
                "precision": "float32", "xla": False, "resumed_from_epoch": None,
                "preprocess": {"mean": None, "std": None}, "params": params,
                "config": config["training"], "completed_at": created_at.isoformat()}
    meta = {
        "pipeline": pipeline, "run_id": run_id, "created_at": created_at.isoformat(),
        "config": config,
        "dataset": {"fingerprint": dataset.fingerprint, "path": dataset.path,
                    "source": str(Path(dataset.path).parent / "fake.tar.gz"),
                    "archive_sha256": "ab" * 32, "format": "image-folder", "classes": list(CLASSES),
                    "counts": read_json(Path(dataset.path) / "manifest.json")["counts"],
                    "shapes": read_json(Path(dataset.path) / "manifest.json")["shapes"]},
        "validation": {"checks": [{"name": "schema", "passed": True, "detail": "pandera: 0 failures"},
                                  {"name": "class balance", "passed": True, "detail": "within 10%"}],
                       "counts": read_json(Path(dataset.path) / "manifest.json")["counts"],
                       "channel_mean": [0.49, 0.48, 0.45], "channel_std": [0.25, 0.24, 0.26],
                       "train_test_duplicates": 0},
        "cache_keys": {"download": "a1" * 8, "train": "b2" * 8},
        "flow_run_id": None,
        "versions": {"python": "3.11", "tensorflow": "2.21.0", "keras": "3.15.0",
                     "prefect": "3.9.1", "numpy": np.__version__},
        "devices": ["/physical_device:CPU:0"],
        "stages": {"download": {"seconds": 0.4, "cache_hit": True},
                   "prepare": {"seconds": 1.2, "cache_hit": True},
                   "train": {"seconds": training["seconds"], "cache_hit": False}},
        "model": {"name": model, "params": params,
                  "layers": [{"name": n, "class": c, "output_shape": s, "params": p}
                             for n, c, s, p in NOTEBOOK_LAYERS]},
        "training": training,
        "promotion": {"promoted": promoted, "reason": reason, "metric": "test_accuracy", "value": acc,
                      "champion_before": champ["run_id"] if champ else None,
                      "champion_value": champ["value"] if champ else None,
                      "previous_run": previous, "previous_value": prev_value},
        "files": recorded_files(run_dir),
    }
    atomic_write_json(run_dir / "metadata.json", meta)
    if promoted:
        registry = read_json(registry_path) if registry_path.is_file() else {}
        set_champion(registry, {"run_id": run_id, "metric": "test_accuracy", "value": acc,
                                "promoted_at": created_at.isoformat(), "reason": reason, "by": "rule"})
        write_registry(registry_path, registry)
    return run_dir


def recorded_files(run_dir: Path) -> dict[str, str]:
    """metadata.json's ``files`` as the store records them, for a fake run: a stand-in
    model.keras is written first (the readers check its sha256, never load it)."""
    model = run_dir / "model.keras"
    if not model.exists():
        model.write_bytes(b"not a keras model: " + run_dir.name.encode())
    return {name: hash_file(run_dir / name).sha256 for name in ("model.keras", "metrics.json", "history.json",
                                                                "predictions.npz") if (run_dir / name).is_file()}


T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the artifacts' tables
def stub_run(artifacts: Path, pipeline: str, run_id: str, acc: float, *, train_key="k", sha=None,
             created="2026-12-01T10:00:00") -> Path:
    """A run folder holding only what the artifacts' tables and the cluster's lookups read. Its
    files verify (``tasks.core.verify``), unless ``sha`` names the model's sha256 as train.json
    would (the cluster's lookups match it; the run is then damaged for every other reader)."""
    run = artifacts / pipeline / "runs" / run_id
    run.mkdir(parents=True)
    atomic_write_json(run / "metrics.json", {"test_accuracy": acc, "per_class": [
        {"class": "cat", "precision": 0.123456, "recall": 0.5, "accuracy": 0.5, "support": 4}]})
    atomic_write_json(run / "metadata.json", {
        "pipeline": pipeline, "run_id": run_id, "created_at": created,
        "cache_keys": {"train": train_key},
        "files": {**recorded_files(run), **({"model.keras": sha} if sha else {})},
        "validation": {"checks": [{"name": "labels in range", "passed": True, "detail": "0..9"},
                                  {"name": "no NaN", "passed": False, "detail": "3 rows"}]}})
    return run


# --------------------------------------------------------------------------- damaged run files
def strict_json(path: Path):
    """The file parsed as strict JSON: ``NaN``/``Infinity`` tokens fail the test."""
    def refuse(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def set_key(key_path: str, value):
    """A damage: set ``key_path`` (dotted) of a JSON file's content to ``value``."""
    def damage(obj):
        *parents, last = key_path.split(".")
        node = obj
        for part in parents:
            node = node[part]
        node[last] = value
        return obj
    return damage


DAMAGES = {  # id: (pipeline, file, new bytes or a function of the parsed content)
    "registry-truncated": ("alpha", "registry.json", b'{"champion": {"run_id": "2026'),
    "registry-a-list": ("alpha", "registry.json", b"[1, 2]"),
    "registry-champion-a-number": ("alpha", "registry.json", b'{"champion": 5}'),
    "registry-run-id-a-number": ("alpha", "registry.json", b'{"champion": {"run_id": 7, "value": "x"}}'),
    "registry-not-utf8": ("alpha", "registry.json", b"\xff\xfe\x00garbage"),
    "registry-nested-100k-deep": ("alpha", "registry.json", b"[" * 100_000),
    "registry-empty": ("alpha", "registry.json", b""),
    "registry-a-folder": ("alpha", "registry.json", "folder"),
    "metadata-created-at-null": ("beta", "metadata.json", set_key("created_at", None)),
    "metadata-created-at-not-a-time": ("beta", "metadata.json", set_key("created_at", "yesterday")),
    "metadata-training-a-string": ("beta", "metadata.json", set_key("training", "oops")),
    "metadata-seconds-a-string": ("beta", "metadata.json", set_key("training.seconds", "40")),
    "metadata-promotion-a-list": ("beta", "metadata.json", set_key("promotion", [])),
    "metadata-counts-a-list": ("beta", "metadata.json", set_key("dataset.counts", [1])),
    "metadata-a-list": ("beta", "metadata.json", b"[]"),
    "metadata-70-mb": ("beta", "metadata.json", b" " * (70 << 20) + b"{}"),
    "metrics-a-fifo": ("beta", "metrics.json", "fifo"),  # a read would block forever
    "metrics-accuracy-text": ("beta", "metrics.json", set_key("test_accuracy", "high")),
    "metrics-confusion-2x2": ("beta", "metrics.json", set_key("confusion_matrix", [[1, 0], [0, 1]])),
    "history-epochs-a-string": ("beta", "history.json", set_key("epochs", "x")),
    "history-row-a-number": ("beta", "history.json", set_key("epochs", [1, 2])),
    "predictions-not-a-zip": ("beta", "predictions.npz", b"PK\x03\x04garbage"),
    "predictions-label-out-of-range": ("beta", "predictions.npz", "label-99"),
}


def two_pipelines(root: Path) -> SimpleNamespace:
    """`alpha` with two runs (the second its champion) and `beta` with one, a dataset cache for
    their test images, and a pipelines.yaml naming both."""
    art, data = root / "artifacts", root / "data"
    ds = make_dataset(data, n_test=30)
    alpha = [make_run(art, ds, "alpha", T0, skill=1.0, seed=1),
             make_run(art, ds, "alpha", T0 + timedelta(hours=1), skill=3.0, seed=2)]
    beta = [make_run(art, ds, "beta", T0 + timedelta(hours=2), skill=2.0, seed=3)]
    cfg = root / "pipelines.yaml"
    cfg.write_text("artifacts_dir: artifacts\npipelines: {alpha: {}, beta: {}}\n")
    return SimpleNamespace(art=art, alpha=alpha, beta=beta, cfg=cfg)


def damage(env: SimpleNamespace, pipeline: str, name: str, how) -> Path:
    """Damage one file of ``two_pipelines``: the pipeline's registry, or a file of beta's run."""
    path = (env.art / pipeline / name if name == "registry.json" else env.beta[0] / name)
    if how in ("folder", "fifo"):
        path.unlink()
        path.mkdir() if how == "folder" else os.mkfifo(path)
    elif how == "label-99":  # a prediction of class 99 of 10
        np.savez(path, y_true=np.array([0, 1]), y_pred=np.array([0, 99]), probs=np.zeros((2, 10)))
    else:
        path.write_bytes(how if isinstance(how, bytes) else json.dumps(how(read_json(path))).encode())
    return path
