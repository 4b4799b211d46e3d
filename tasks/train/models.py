"""The model builders: pure Keras, each sized by its arguments (input shape, number of classes),
registered by the name a pipeline's ``model:`` gives: ``seed_cnn`` (the course notebook's) and
``airbench`` (``tasks.train.airbench``, sized by ``training.recipe``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from tasks.train.airbench import build_airbench
from tasks.train.config import TrainingError

# name -> builder(input_shape, num_classes) -> keras.Model. Filled below by @register_model.
MODELS: dict[str, Callable] = {}


def register_model(name: str):
    """Decorator: make the builder available as ``model: <name>`` in pipelines.yaml."""
    def add_to_registry(builder):
        MODELS[name] = builder
        return builder

    return add_to_registry


@register_model("seed_cnn")
def seed_cnn(input_shape, num_classes):
    """The course notebook's CNN, layer for layer (624,106 parameters on 32x32x3, 10 classes).

    The softmax runs in float32 so mixed precision keeps a stable output.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for _ in range(2):  # the notebook's block, twice: Conv32-same, Conv32, MaxPool, Dropout .25
        x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(32, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


register_model("airbench")(build_airbench)  # tasks/train/airbench.py: sized by training.recipe.widths


def model_options(name: str) -> set[str]:
    """The keyword options builder ``name`` takes beyond (input_shape, num_classes): ``recipe``
    (the training recipe's settings), ``whiten_images`` (normalised training images)."""
    params = list(inspect.signature(MODELS[name]).parameters)[2:] if name in MODELS else []
    return set(params)


def as_probabilities(model):
    """``model`` itself when it ends in a softmax, else the same layers with a float32 softmax
    on top: every committed model outputs probabilities (evaluation, export and serving expect
    them), whether it trained on logits or not."""
    import keras

    activation = getattr(model.layers[-1], "activation", None)
    if getattr(activation, "__name__", "") == "softmax":
        return model
    probs = keras.layers.Softmax(dtype="float32", name="probs")(model.output)
    return keras.Model(model.input, probs, name=model.name)


def outputs_logits(model) -> bool:
    """True unless the model's last layer is a softmax (then its loss takes probabilities)."""
    return getattr(getattr(model.layers[-1], "activation", None), "__name__", "") != "softmax"


def build_model(name: str, input_shape, num_classes: int, **options):
    """The registered model ``name``, sized for the data; a person-readable error otherwise.
    ``options`` the builder does not take (see ``model_options``) are left out."""
    if name not in MODELS:
        raise TrainingError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}. "
                            "Set `model:` in pipelines.yaml to one of them or register a builder.")
    wanted = model_options(name)
    try:
        return MODELS[name](tuple(input_shape), int(num_classes),
                            **{k: v for k, v in options.items() if k in wanted})
    except ValueError as exc:
        raise TrainingError(f"model {name!r} cannot take images of shape {tuple(input_shape)} "
                            f"({num_classes} classes): {exc}. Use larger images or another model.") from exc
