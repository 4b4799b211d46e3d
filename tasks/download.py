"""Stage 1: download and cache the dataset (see issue: download-and-cache)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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

    format: Literal["cifar10-binary", "cifar10-python", "image-folder"] = "cifar10-binary"
    source: str | None = None  # https URL, file:// URL or local path; None = the official URL
    mirrors: list[str] = field(default_factory=list)
    sha256: str | None = None
    md5: str | None = None
    limit_train: int | None = None  # seeded, class-balanced subset
    limit_test: int | None = None
    subset_seed: int = 0
    max_extract_mb: int = 2048  # archive-bomb cap on decoded/extracted bytes
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) pairs for settings that are wrong together."""
        out: list[tuple[str, str]] = []
        if self.format == "image-folder" and not self.source:
            out.append(("source", "image-folder needs a source: a folder or a .tar/.tar.gz/.zip"))
        official = OFFICIAL.get(self.format, {}).get("url")
        for key, url in [("source", self.source)] + [
            (f"mirrors[{i}]", m) for i, m in enumerate(self.mirrors)
        ]:
            if url and url.startswith(("http://", "https://")) and url != official:
                if not (self.sha256 or self.md5):
                    out.append(
                        (key, f"{url!r} is downloaded over the network but the dataset has no "
                              "sha256 (or md5): add `sha256: <hex>` so a bad download is caught")
                    )
                    break
        if self.sha256 is not None and not _is_hex(self.sha256, 64):
            out.append(("sha256", f"{self.sha256!r} is not 64 hex digits"))
        if self.md5 is not None and not _is_hex(self.md5, 32):
            out.append(("md5", f"{self.md5!r} is not 32 hex digits"))
        for key in ("limit_train", "limit_test", "max_extract_mb", "retries"):
            v = getattr(self, key)
            if v is not None and v < (0 if key == "retries" else 1):
                out.append((key, f"must be positive, got {v}"))
        return out


def _is_hex(s: str, n: int) -> bool:
    return len(s) == n and all(c in "0123456789abcdefABCDEF" for c in s)
