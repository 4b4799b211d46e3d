"""A dataset given as image files: ``train/<class>/*`` and ``test/<class>/*`` (optionally under
one top folder), as a folder, a .tar(.gz/.bz2/.xz) or a .zip.

Classes are the sorted folder names (Unicode names compared in NFC, so a macOS-made ``café``
is the same class as a Linux-made one), at most 256 of them (labels are uint8); images are PNG
or JPEG (``tasks.core.images``), all one size; greyscale stays one channel unless some image is
colour. Every error names the file or folder to fix.

What is skipped, and said (the log and the cache's manifest list it): hidden entries (a name
starting with ``.``: ``.DS_Store``, ``.ipynb_checkpoints/``, AppleDouble ``._*`` files), macOS
``__MACOSX/`` folders, Windows ``Thumbs.db``/``desktop.ini``, and files outside
``<split>/<class>/`` (a README beside the splits). What is refused: an image in a subfolder of
a class folder, a name twice in one archive, and a linked folder (links are not followed).

Memory stays within ``dataset.max_extract_mb``: the files read, the tar headers and the decoded
pixels are charged to one budget. Each image's header is read before its pixels: the first one
sizes the array (files x its size, charged to the budget before it is allocated, so a set that
would decode past the budget is refused before any pixel is decoded), and every other one is
checked against it (size, caps) before it is decoded straight into that array.
"""

from __future__ import annotations

import functools
import os
import unicodedata
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from tasks.core.images import ImageDecodeError, ImageInfo, decode_image
from tasks.core.members import ExtractionBudget
from tasks.download.archive import iter_folder, iter_tar, iter_zip
from tasks.download.errors import DatasetFormatError, UnsafeArchiveError

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]
SPLITS = ("train", "test")
MAX_CLASSES = 256  # labels are stored as uint8
OS_FILES = frozenset({"Thumbs.db", "ehthumbs.db", "desktop.ini", "Icon\r"})
SHOWN = 50  # skipped entries listed by name in the notes (all are counted)
Files = dict[str, dict[str, list[tuple[str, bytes]]]]  # split -> class -> [(member name, bytes)]


def skip_reason(name: str) -> tuple[str, str] | None:
    """(the entry to report, why) when ``name`` is, or lies inside, a hidden, ``__MACOSX`` or OS
    metadata entry; None otherwise. A folder's name is given with a trailing '/'."""
    parts = name.split("/")
    for i, part in enumerate(parts):
        why = ("macOS metadata" if part == "__MACOSX" else "hidden" if part.startswith(".")
               else "OS metadata" if part in OS_FILES else None)
        if why:
            return "/".join(parts[:i + 1]) + ("/" if i < len(parts) - 1 else ""), why
    return None


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _is_image_member(name: str) -> bool:
    """``[top/]split/class/file``."""
    parts = name.split("/")
    return len(parts) in (3, 4) and parts[-3] in SPLITS


class _Listing:
    """What an image folder holds, sorted by role while the archive is read."""

    def __init__(self):
        self.items: list[tuple[str, bytes]] = []  # candidate images
        self.dirs: set[str] = set()
        self.others: list[str] = []  # files outside [top/]split/class/
        self.skipped: Counter[str] = Counter()
        self.reasons: dict[str, str] = {}

    def skip(self, entry: str, why: str) -> None:
        self.skipped[entry] += 1
        self.reasons[entry] = why

    def skipped_hidden(self, name: str) -> bool:
        hit = skip_reason(name)
        if hit is not None:
            self.skip(*hit)
        return hit is not None

    def wanted(self, name: str) -> bool:
        name = _nfc(name)
        if self.skipped_hidden(name):
            return False
        if _is_image_member(name):
            return True
        self.others.append(name)
        return False

    def notes(self) -> dict:
        shown = sorted(self.skipped)[:SHOWN]
        return {"skipped": [{"entry": e, "reason": self.reasons[e], "count": self.skipped[e]} for e in shown],
                "skipped_entries": sum(self.skipped.values())}


def _read_listing(path: Path, budget: ExtractionBudget, digest: list | None) -> _Listing:
    listing, dirs = _Listing(), set()
    if path.is_dir():
        members = iter_folder(path, listing.wanted, budget, dirs,
                              prune=lambda rel: listing.skipped_hidden(_nfc(rel) + "/"))
    elif zipfile.is_zipfile(path):
        members = iter_zip(path, listing.wanted, budget, dirs)
    else:
        members = iter_tar(path, listing.wanted, budget, dirs, digest=digest)
    listing.items = [(_nfc(name), data) for name, data in members]
    listing.dirs = {d for d in map(_nfc, dirs) if not listing.skipped_hidden(d + "/")}
    twice = sorted(n for n, k in Counter(n for n, _ in listing.items).items() if k > 1)
    if twice:
        raise DatasetFormatError(f"{path}: {twice[0]!r} is in the archive more than once "
                                 f"({len(twice)} such names); which copy is meant is unclear: "
                                 "rebuild the archive with each file once")
    return listing


def _root_prefix(path: Path, listing: _Listing) -> str:
    """The folder that holds train/ and test/ (the root, or a single top folder), as a prefix."""
    prefixes = {n.rsplit("/", 3)[0] if n.count("/") == 3 else "" for n, _ in listing.items}
    for d in listing.dirs:  # empty class folders show up only as directories
        parts = d.split("/")
        if len(parts) in (2, 3) and parts[-2] in SPLITS:
            prefixes.add("/".join(parts[:-2]))
    if not prefixes:
        raise DatasetFormatError(f"{path}: no train/<class>/ or test/<class>/ folders with images "
                                 "(optionally under one top folder)")
    if len(prefixes) != 1:
        raise DatasetFormatError(f"{path}: train/ and test/ are in more than one place: under "
                                 f"{sorted(p or '(the root)' for p in prefixes)}; keep one copy")
    root = prefixes.pop()
    return f"{root}/" if root else ""


def _sort_others(path: Path, listing: _Listing, pre: str) -> None:
    """Refuse an image in a subfolder of a class folder; note every other stray file as
    skipped, grouped by its first folder."""
    for name in listing.others:
        rel = name[len(pre):] if name.startswith(pre) else None
        parts = (rel if rel is not None else name).split("/")
        if rel is not None and len(parts) >= 4 and parts[0] in SPLITS:
            raise DatasetFormatError(
                f"{path}: {name} is in a subfolder of the class folder {pre}{parts[0]}/{parts[1]}/; "
                "images must sit directly in their class folder: move them up, or remove the subfolder")
        base = pre if rel is not None else ""
        entry = base + parts[0] + ("/" if len(parts) > 1 else "")
        listing.skip(entry, f"not in {pre}<split>/<class>/")


def _files_by_class(path: Path, listing: _Listing, pre: str) -> Files:
    """Every split's class folders (empty ones included) and their files; refuses a split with
    no class, an empty class folder, train/test with different classes, and too many classes."""
    splits: Files = {split: {} for split in SPLITS}
    for d in listing.dirs:
        if d.startswith(pre) and d[len(pre):].count("/") == 1:
            split, cls = d[len(pre):].split("/")
            if split in splits:
                splits[split].setdefault(cls, [])
    for name, data in listing.items:
        split, cls, _ = name[len(pre):].split("/")
        splits[split].setdefault(cls, []).append((name, data))
    for split, classes in splits.items():
        if not classes:
            raise DatasetFormatError(f"{path}: no {pre}{split}/<class>/ folders with images")
        for cls, files in classes.items():
            if not files:
                raise DatasetFormatError(f"{path}: the class folder {pre}{split}/{cls}/ is empty; "
                                         "add images or remove the folder")
            files.sort(key=lambda item: item[0])
    train, test = set(splits["train"]), set(splits["test"])
    if test != train:
        raise DatasetFormatError(
            f"{path}: train/ and test/ have different class folders: only in train: "
            f"{sorted(train - test)}, only in test: {sorted(test - train)}")
    if len(train) > MAX_CLASSES:
        raise DatasetFormatError(
            f"{path}: {len(train)} class folders in {pre}train/, but labels are stored as uint8: at "
            f"most {MAX_CLASSES} classes. Merge classes or split the dataset (the last ones: "
            f"{sorted(train)[MAX_CLASSES:][:5]})")
    return splits


class _Canvas:
    """The dataset's one pixel array, sized from the first image's header and the number of
    files, charged to the budget before it exists; widened from grey to RGB when a colour image
    turns up. Every image's header is checked against it before the image is decoded."""

    def __init__(self, path: Path, n: int, budget: ExtractionBudget):
        self.path, self.n, self.budget = path, n, budget
        self.x: np.ndarray | None = None
        self.first: tuple[int, int, str] = (0, 0, "")  # height, width, member name

    def expect(self, name: str, info: ImageInfo) -> None:
        if self.x is None:
            self.first = (info.height, info.width, name)
            self._allocate(info.channels)
        elif (info.height, info.width) != self.first[:2]:
            h, w, first = self.first
            raise DatasetFormatError(f"{self.path}:{name} is {info.width}x{info.height} pixels but "
                                     f"{first} is {w}x{h}: every image must be the same size")
        elif info.channels > self.x.shape[-1]:
            self._allocate(info.channels)

    def _allocate(self, channels: int) -> None:
        h, w, _ = self.first
        _charge_pixels(self.path, self.budget, self.n, (h, w), channels)
        x = np.empty((self.n, h, w, channels), dtype=np.uint8)
        if self.x is not None:  # grey so far: the images decoded until now, as RGB
            x[...] = self.x
            self.budget.left += self.x.nbytes  # the grey array is dropped
        self.x = x

    def put(self, i: int, img: np.ndarray) -> None:
        self.x[i] = img if img.ndim == 3 else img[..., None]  # broadcasts grey to RGB when needed


def _charge_pixels(path: Path, budget: ExtractionBudget, n: int, shape: tuple[int, int], channels: int) -> None:
    """The decoded array counts against the same budget as the files read (both are held)."""
    decoded = n * shape[0] * shape[1] * channels
    if decoded > budget.left:
        mib = 2**20
        raise UnsafeArchiveError(
            f"{path}: its {n:,} images of {shape[1]}x{shape[0]}x{channels} decode to "
            f"{decoded / mib:,.1f} MiB; with the {(budget.max - budget.left) / mib:,.1f} MiB of files "
            f"read that is more than dataset.max_extract_mb ({budget.max / mib:,.0f} MiB). Refused "
            "before decoding: raise dataset.max_extract_mb if it is genuine, or use smaller images.")
    budget.take(decoded, "decoded pixels")


def _decode_all(path: Path, splits: Files, classes: tuple[str, ...], budget: ExtractionBudget
                ) -> tuple[np.ndarray, np.ndarray]:
    """Every image, train then test, each in class then file-name order, decoded into one array
    (each header checked before its pixels are), and the labels."""
    order = [(label, name, data) for split in SPLITS for label, cls in enumerate(classes)
             for name, data in splits[split][cls]]
    canvas = _Canvas(path, len(order), budget)
    for i, (_, name, data) in enumerate(order):
        try:
            img = decode_image(f"{path}:{name}", data, before=functools.partial(canvas.expect, name))
        except ImageDecodeError as exc:
            raise DatasetFormatError(str(exc)) from exc
        canvas.put(i, img)
    return canvas.x, np.fromiter((label for label, _, _ in order), dtype=np.uint8, count=len(order))


def decode_image_folder(path: str | os.PathLike, max_bytes: int, digest: list | None = None,
                        notes: dict | None = None) -> Arrays:
    """(x_train, y_train, x_test, y_test, classes) of an image folder or its archive. ``notes``,
    when a dict, gets what was skipped (``skipped``: entry, reason, count; ``skipped_entries``)."""
    path = Path(path)
    budget = ExtractionBudget(max_bytes, str(path))
    listing = _read_listing(path, budget, digest)
    pre = _root_prefix(path, listing)
    _sort_others(path, listing, pre)
    splits = _files_by_class(path, listing, pre)
    classes = tuple(sorted(splits["train"]))
    x, y = _decode_all(path, splits, classes, budget)
    n_train = sum(len(files) for files in splits["train"].values())
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    if notes is not None:
        notes.update(listing.notes())
    return x_train, y_train, x_test, y_test, classes
