"""The ways the download stage fails, by what the caller should do about them: retry (network),
try the next source (not found, wrong bytes), or fix the archive or the config (unsafe, wrong
format)."""

from __future__ import annotations

from tasks.core.errors import CifarError
from tasks.core.members import UnsafeArchiveError  # noqa: F401  (shared with predict: see core/members)


class DownloadError(CifarError):
    """No source delivered a verified archive."""


class TransientDownloadError(DownloadError):
    """A network error or a 5xx: the same URL may work in a moment (the task retries these)."""


class SourceNotFoundError(DownloadError):
    """404 (or another 4xx), or a local file that is not there: not retried against that URL."""


class ChecksumError(DownloadError):
    """The bytes are not the archive the config names: not retried against that URL."""


class DatasetFormatError(CifarError):
    """The archive is safe but its content is not the format the config says."""
