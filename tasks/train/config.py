"""What the training stage is told and what it hands on: the ``training:`` settings of
pipelines.yaml, the record of a trained model, and the error for settings it cannot train with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tasks.core.errors import CifarError
from tasks.core.settings import SETTINGS


class TrainingError(CifarError):
    """Training cannot start with these settings (unknown model, input too small, no TF_CONFIG)."""


@dataclass(frozen=True)
class OptimizerConfig:
    """``training.optimizer:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    name: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    learning_rate: float = 1e-4
    decay: float = 1e-6  # Keras 2's per-step `decay`, as InverseTimeDecay(lr, 1, decay)
    momentum: float = 0.0


@dataclass(frozen=True)
class TrainingConfig:
    """``training:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    epochs: int = 20
    batch_size: int = 32
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = 42
    shuffle: bool = True
    augment: bool = False  # random flip + pad-and-crop, in tf.data
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    mixed_precision: Literal["auto", "off", "mixed_float16", "mixed_bfloat16"] = "auto"
    xla: Literal["auto", "on", "off"] = "auto"

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                out.append((key, f"must be at least 1, got {getattr(self, key)}"))
        if self.optimizer.learning_rate <= 0:
            out.append(("optimizer.learning_rate", f"must be > 0, got {self.optimizer.learning_rate}"))
        if self.optimizer.decay < 0:
            out.append(("optimizer.decay", f"must be >= 0, got {self.optimizer.decay}"))
        return out


@dataclass(frozen=True)
class TrainRecord:
    """What the training stage hands on: the cache key and the committed model folder."""

    key: str
    path: str  # <data_dir>/models/<key>/
