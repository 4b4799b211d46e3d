"""Stage 3: training (issue: training)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    learning_rate: float = 1e-4
    decay: float = 1e-6  # Keras 2's per-step `decay`, as InverseTimeDecay(lr, 1, decay)
    momentum: float = 0.0


@dataclass(frozen=True)
class TrainingConfig:
    """``training:`` in pipelines.yaml."""

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


# name -> builder(input_shape, num_classes) -> keras.Model. Filled below by @register_model.
MODELS: dict = {}


def register_model(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


@register_model("seed_cnn")
def seed_cnn(input_shape, num_classes):  # placeholder until the training stage lands
    raise NotImplementedError("the training stage has not landed yet")
