"""What the training stage is told: the ``training:`` settings of pipelines.yaml, and the error
for settings it cannot train with. What it hands on, ``TrainRecord``, is in ``tasks.core.records``."""

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

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.learning_rate <= 0:
            out.append(("learning_rate", f"must be > 0, got {self.learning_rate}"))
        if self.decay < 0:
            out.append(("decay", f"must be >= 0, got {self.decay}"))
        if not 0 <= self.momentum < 1:  # 1 or more never converges; below 0 is no momentum
            out.append(("momentum", f"must be within [0, 1), got {self.momentum}"))
        return out


@dataclass(frozen=True)
class RecipeConfig:
    """``training.recipe:`` in pipelines.yaml: the airbench recipe (model ``airbench``), every piece
    a switch so its worth can be measured. Absent (the default), training follows the notebook's
    ``optimizer:``/``augment:``; present, the recipe replaces both."""

    __pydantic_config__ = SETTINGS

    widths: tuple[int, int, int] = (64, 128, 128)  # airbench's three blocks: 64/128/128 .. 128/384/384
    whiten: bool = True  # stem from the training patches' eigenvectors (off: a trainable 2x2 conv)
    whiten_images: int = 5000  # training images (seeded sample) whose patches whiten the stem
    whiten_eps: float = 5e-4
    whiten_bias_epochs: int | None = 3  # the stem's bias trains this many epochs (null: all of them)
    dirac: bool = True  # the first C_in filters of every 3x3 conv start as the identity
    learning_rate: float = 1.5  # peak SGD rate per 1,024 images of batch (scaled by batch_size/1024)
    momentum: float = 0.85  # Nesterov
    schedule: bool = True  # warm-up lr_start -> 1 over `warmup` of the steps, then linear to lr_end
    warmup: float = 0.23
    lr_start: float = 0.2
    lr_end: float = 0.07
    weight_decay: float = 6.65e-4  # coupled L2 (kernel_regularizer: gradient 2*wd*w); 0: off
    bias_rate: float = 64.0  # BN biases learn this many times faster; 1: off
    label_smoothing: float = 0.2
    lookahead: bool = True  # every `lookahead_every` steps w <- ema (incl. BN statistics)
    lookahead_every: int = 5
    lookahead_decay: float = 0.95
    flip: Literal["alternate", "random", "off"] = "alternate"  # alternate: each epoch the other half
    translate: int = 2  # random integer shifts up to this many pixels, reflect-padded; 0: off
    tta: Literal["multi", "mirror", "off"] = "multi"  # test-time views: 6, 2 or 1
    validate: Literal["every", "last"] = "every"  # validation pass after every epoch or the last only

    def problems(self) -> list[tuple[str, str]]:
        checks = [
            ("widths", all(v >= 1 for v in self.widths), f"each must be at least 1, got {list(self.widths)}"),
            ("whiten_images", self.whiten_images >= 1, f"must be at least 1, got {self.whiten_images}"),
            ("whiten_eps", self.whiten_eps > 0, f"must be > 0, got {self.whiten_eps}"),
            ("whiten_bias_epochs", (self.whiten_bias_epochs or 0) >= 0,
             f"must be >= 0 or null, got {self.whiten_bias_epochs}"),
            ("learning_rate", self.learning_rate > 0, f"must be > 0, got {self.learning_rate}"),
            ("momentum", 0 <= self.momentum < 1, f"must be within [0, 1), got {self.momentum}"),
            ("warmup", 0 <= self.warmup < 1, f"must be within [0, 1), got {self.warmup}"),
            ("lr_start", self.lr_start >= 0, f"must be >= 0, got {self.lr_start}"),
            ("lr_end", self.lr_end >= 0, f"must be >= 0, got {self.lr_end}"),
            ("weight_decay", self.weight_decay >= 0, f"must be >= 0, got {self.weight_decay}"),
            ("bias_rate", self.bias_rate > 0, f"must be > 0, got {self.bias_rate}"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, f"must be within [0, 1), got {self.label_smoothing}"),
            ("lookahead_every", self.lookahead_every >= 1, f"must be at least 1, got {self.lookahead_every}"),
            ("lookahead_decay", 0 < self.lookahead_decay < 1, f"must be within (0, 1), got {self.lookahead_decay}"),
            ("translate", self.translate >= 0, f"must be >= 0, got {self.translate}"),
        ]
        return [(key, text) for key, ok, text in checks if not ok]


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
    recipe: RecipeConfig | None = None  # the airbench recipe; None: the notebook's
    # The recipe's epochs chosen on each machine so the run fits this many of the notebook's epochs
    # there (tasks.train.budget); `epochs` is then the most it may take. None: `epochs` as given.
    budget: float | None = None

    def epochs_text(self) -> str:
        """"17 epoch(s)", or for a budget the machine's choice and its ceiling."""
        if self.budget is None:
            return f"{self.epochs} epoch(s)"
        return f"the epochs of {self.budget:g} notebook epochs on this machine (at most {self.epochs})"

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                out.append((key, f"must be at least 1, got {getattr(self, key)}"))
        if not 0 <= self.seed < 2**32:  # what NumPy and TensorFlow take as a seed
            out.append(("seed", f"must be within [0, {2**32 - 1}], got {self.seed}"))
        if self.recipe is not None and self.augment:
            out.append(("augment", "the recipe augments on its own (recipe.flip, recipe.translate); "
                        "remove training.augment or training.recipe"))
        if self.budget is not None:
            if isinstance(self.budget, bool) or not 0 < self.budget < 1e6:
                out.append(("budget", f"must be a number of notebook epochs > 0, got {self.budget!r}"))
            elif self.recipe is None:
                out.append(("budget", "chooses a recipe's epochs (its schedule is laid over them); the "
                            "notebook's recipe trains `epochs` as given: add training.recipe or remove "
                            "training.budget"))
            elif self.strategy == "multi_worker":
                out.append(("budget", "each worker would time its own machine and could choose other "
                            "epochs; set training.epochs and no budget for multi-worker training"))
        if self.recipe is not None and self.optimizer != OptimizerConfig():
            out.append(("optimizer", "is not used with training.recipe (its SGD takes recipe.learning_rate "
                        "and recipe.momentum); remove training.optimizer or training.recipe"))
        return out
