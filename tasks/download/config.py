"""What to download: the ``dataset:`` settings, the official archives and their checksums, and
the list of sources to try. Pure: nothing here touches the network or the disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlsplit

from tasks.core import holdout
from tasks.core.settings import SETTINGS
from tasks.download.errors import DownloadError

OFFICIAL = {
    "cifar10-binary": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "size": 170_052_171,
        "sha256": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        "md5": "c32a1d4ab5d03f1284b67883e8d87530",
    },
    "cifar10-python": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "size": 170_498_071,
        "sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    },
}


@dataclass(frozen=True)
class DatasetConfig:
    """``dataset:`` in pipelines.yaml."""

    __pydantic_config__ = SETTINGS

    format: Literal["cifar10-binary", "cifar10-python", "image-folder"] = "cifar10-binary"
    source: str | None = None  # https URL, file:// URL or local path; None = the official URL
    mirrors: list[str] = field(default_factory=list)
    sha256: str | None = None
    # A published checksum to follow instead of a pinned one: a small ``.sha256`` file beside the
    # archive (``<hex>  <name>`` lines, as sha256sum writes them), read at every run.
    sha256_url: str | None = None
    md5: str | None = None
    limit_train: int | None = None  # seeded, class-balanced subset
    limit_test: int | None = None
    subset_seed: int = 0
    # The validation split (tasks.core.holdout): a fraction of the training images (0.1), a
    # number of them (5000), or "test" (the notebook's protocol: validate on the test split).
    # Not the download stage's business: it decodes the same cache whatever this says.
    validation: int | float | str = 0.1  # checked by problems(): a str must be "test"
    validation_seed: int = 0
    max_extract_mb: int = 2048  # archive-bomb cap on decoded/extracted bytes
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4

    @property
    def holdout(self) -> holdout.Holdout:
        """The validation split these settings ask for (``validation``, ``validation_seed``)."""
        return holdout.Holdout(self.validation, self.validation_seed)

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) pairs for settings that are wrong together."""
        out: list[tuple[str, str]] = []
        if self.format == "image-folder" and not self.source:
            out.append(("source", "image-folder needs a source: a folder or a .tar/.tar.gz/.zip"))
        out += self._network_sources_without_checksum()
        if self.sha256_url and self.sha256:
            out.append(("sha256_url", "set dataset.sha256 (a pinned checksum) or dataset.sha256_url (a "
                                      "published one to follow), not both"))
        if self.sha256 is not None and not _is_hex(self.sha256, 64):
            out.append(("sha256", f"{self.sha256!r} is not 64 hex digits"))
        if self.md5 is not None and not _is_hex(self.md5, 32):
            out.append(("md5", f"{self.md5!r} is not 32 hex digits"))
        for key in ("limit_train", "limit_test", "max_extract_mb", "retries"):
            v = getattr(self, key)
            if v is not None and v < (0 if key == "retries" else 1):
                out.append((key, f"must be positive, got {v}"))
        out += [("validation", text) for text in holdout.problems(self.validation)]
        if not 0 <= self.validation_seed < 2**32:
            out.append(("validation_seed", f"must be within [0, {2**32 - 1}], got {self.validation_seed}"))
        if not 0 <= self.subset_seed < 2**32 - 1:  # NumPy's seed range (the test split takes seed + 1)
            out.append(("subset_seed", f"must be within [0, {2**32 - 2}], got {self.subset_seed}"))
        for key in ("connect_timeout", "read_timeout"):
            if getattr(self, key) <= 0:
                out.append((key, f"must be a positive number of seconds, got {getattr(self, key)}"))
        return out

    def _network_sources_without_checksum(self) -> list[tuple[str, str]]:
        """The first non-official http(s) source, when there is no checksum to verify it by."""
        if self.sha256 or self.md5 or self.sha256_url:
            return []
        official = OFFICIAL.get(self.format, {}).get("url")
        named = [("source", self.source)] + [(f"mirrors[{i}]", m) for i, m in enumerate(self.mirrors)]
        for key, url in named:
            if url and url.startswith(("http://", "https://")) and url != official:
                return [(key, (f"{url!r} is downloaded over the network but the dataset has no "
                               "sha256 (or md5): add `sha256: <hex>` so a bad download is caught"))]
        return []


def _is_hex(s: str, n: int) -> bool:
    return len(s) == n and all(c in "0123456789abcdefABCDEF" for c in s)


@dataclass(frozen=True)
class Expected:
    """The digests (and size) the archive must have; none known for a local file without one."""

    sha256: str | None = None
    md5: str | None = None
    size: int | None = None

    @property
    def known(self) -> bool:
        return bool(self.sha256 or self.md5)

    @property
    def key(self) -> str:
        """The content address: the expected digest (sha256 preferred)."""
        return (self.sha256 or self.md5 or "").lower()

    def describe(self) -> str:
        parts = [f"sha256 {self.sha256}" if self.sha256 else "", f"md5 {self.md5}" if self.md5 else "",
                 f"{self.size:,} bytes" if self.size else ""]
        return ", ".join(p for p in parts if p) or "(no checksum)"


def expected_for(cfg: DatasetConfig) -> Expected:
    """The checksum the archive must have: the config's, else the built-in one of an official
    source. A local source without one gets ``Expected()`` (it is hashed and used as is)."""
    off = OFFICIAL.get(cfg.format)
    if cfg.sha256 or cfg.md5:
        sha = cfg.sha256.lower() if cfg.sha256 else None
        size = off["size"] if off and sha == off["sha256"] else None
        return Expected(sha, cfg.md5.lower() if cfg.md5 else None, size)
    if off and (cfg.source is None or cfg.source == off["url"]):
        return Expected(off["sha256"], off.get("md5"), off["size"])
    return Expected()


def sources_for(cfg: DatasetConfig) -> list[str]:
    """Where to look, in order: the source (or the official URL), then the mirrors."""
    if cfg.source:
        primary = cfg.source
    elif cfg.format in OFFICIAL:
        primary = OFFICIAL[cfg.format]["url"]
    else:
        raise DownloadError(f"dataset.format {cfg.format!r} has no official URL: set dataset.source")
    return [primary, *cfg.mirrors]


def local_path(source: str) -> Path | None:
    """The filesystem path of a ``file://`` URL or plain path; None for http(s)."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        return Path(unquote(urlsplit(source).path))
    if scheme and len(scheme) > 1:
        raise DownloadError(f"{source!r}: unsupported URL scheme {scheme!r}; use https://, "
                            "file:// or a local path")
    return Path(source)


def archive_name(source: str) -> str:
    """The file name a source's URL or path ends in, made safe for a file name."""
    name = PurePosixPath(unquote(urlsplit(source).path)).name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "archive"
