"""The ways a prediction fails, by what the user should do: pick another model (none there, none
promoted, unknown id), restore or re-save it (its files altered), or fix an input file."""

from __future__ import annotations

from tasks.core.errors import CifarError


class PredictError(CifarError):
    """A prediction that cannot start."""


class NoModelError(PredictError):
    """No run to predict with: no runs at all, no champion yet, or an unknown run id."""


class ModelFileError(PredictError):
    """The run's serving files are missing, or differ from the sha256 its metadata.json recorded."""


class InputError(PredictError):
    """An input path that is missing, unreadable, not an image, or an archive that is refused."""


class RequestError(PredictError):
    """A request to the online endpoint that is refused: its HTTP status (4xx) and why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
