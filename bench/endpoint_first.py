"""The Keras server a user writes first, for ``bench/bench_endpoint.py``'s second baseline: a
FastAPI route on the same uvicorn stack, the JSON body parsed by FastAPI into a dict,
``np.asarray`` over the nested lists, ``model.predict`` on the scaled pixels (as the course
notebook scores), a JSON answer in TF Serving's row format. No batching, no fast path, no
byte cap: what the issue calls "what a user writes first". The model is the run's model.keras,
sha256-checked (``bench_endpoint.KerasScorer`` loads and checks it)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Body, FastAPI


def first_app(scorer) -> FastAPI:
    """``scorer``: a loaded ``KerasScorer`` (its ``model``, ``mean``/``std``, ``classes``, ``ref``)."""
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/models/{name}:predict")
    def predict(name: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        x = np.asarray(body["instances"], dtype=np.float32) / 255
        if scorer.mean is not None:
            x = (x - np.float32(scorer.mean)) / np.float32(scorer.std)
        probs = scorer.model.predict(x, verbose=0)
        return {"predictions": [{"probabilities": p.tolist(), "class_index": int(p.argmax()),
                                 "class_name": scorer.classes[int(p.argmax())]} for p in probs],
                "model_version": scorer.ref.run_id}

    return app
