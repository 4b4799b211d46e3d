"""A dataset given as image files: ``train/<class>/*`` and ``test/<class>/*`` (optionally under
one top folder), as a folder, a .tar(.gz) or a .zip.

Classes are the sorted folder names; images are PNG or JPEG, all one size; grayscale stays one
channel unless some image is colour. Every error names the file or folder to fix.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from tasks.core.images import ImageDecodeError, decode_image
from tasks.download.archive import iter_folder, iter_tar, iter_zip
from tasks.download.errors import DatasetFormatError

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]
SPLITS = ("train", "test")
Files = dict[str, dict[str, list[tuple[str, bytes]]]]  # split -> class -> [(member name, bytes)]


def _is_image_member(name: str) -> bool:
    """``[top/]split/class/file``, not a hidden file."""
    parts = name.split("/")
    return (len(parts) >= 3 and parts[-3] in SPLITS and not parts[-1].startswith(".")
            and len(parts) <= 4)


def _read_members(path: Path, max_bytes: int, dirs: set[str], digest: list | None) -> list[tuple[str, bytes]]:
    if path.is_dir():
        return list(iter_folder(path, _is_image_member, max_bytes, dirs))
    if zipfile.is_zipfile(path):
        return list(iter_zip(path, _is_image_member, max_bytes, dirs))
    return list(iter_tar(path, _is_image_member, max_bytes, dirs, digest=digest))


def _root_prefix(path: Path, items: list[tuple[str, bytes]], dirs: set[str]) -> str:
    """The folder that holds train/ and test/ (the root, or a single top folder), as a prefix."""
    prefixes = {n.rsplit("/", 3)[0] if n.count("/") == 3 else "" for n, _ in items}
    for d in dirs:  # empty class folders show up only as directories
        parts = d.split("/")
        if len(parts) in (2, 3) and parts[-2] in SPLITS:
            prefixes.add("/".join(parts[:-2]))
    if len(prefixes) != 1:
        raise DatasetFormatError(f"{path}: expected train/<class>/* and test/<class>/* (found "
                                 f"{sorted(prefixes) or 'no images'} as roots)")
    root = prefixes.pop()
    return f"{root}/" if root else ""


def _files_by_class(path: Path, items: list[tuple[str, bytes]], dirs: set[str], pre: str) -> Files:
    """Every split's class folders (empty ones included) and their files; refuses a split with
    no class, an empty class folder, and train/test with different classes."""
    splits: Files = {split: {} for split in SPLITS}
    for d in dirs:
        if d.startswith(pre) and d[len(pre):].count("/") == 1:
            split, cls = d[len(pre):].split("/")
            if split in splits:
                splits[split].setdefault(cls, [])
    for name, data in items:
        split, cls, _ = name[len(pre):].split("/")
        splits[split].setdefault(cls, []).append((name, data))
    for split, classes in splits.items():
        if not classes:
            raise DatasetFormatError(f"{path}: no {pre}{split}/<class>/ folders with images")
        for cls, files in classes.items():
            if not files:
                raise DatasetFormatError(f"{path}: the class folder {pre}{split}/{cls}/ is empty; "
                                         "add images or remove the folder")
    train, test = set(splits["train"]), set(splits["test"])
    if test != train:
        raise DatasetFormatError(
            f"{path}: train/ and test/ have different class folders: only in train: "
            f"{sorted(train - test)}, only in test: {sorted(test - train)}")
    return splits


def _decode_image(name: str, data: bytes) -> np.ndarray:
    try:
        return decode_image(name, data)
    except ImageDecodeError as exc:
        raise DatasetFormatError(str(exc)) from exc


def _decode_split(path: Path, files: dict[str, list[tuple[str, bytes]]], classes: tuple[str, ...],
                  first: dict) -> tuple[list[np.ndarray], np.ndarray]:
    """One split's images in class then file-name order, and their labels; every image the size
    of the first one decoded (``first`` remembers it across the splits)."""
    images, labels = [], []
    for label, cls in enumerate(classes):
        for name, data in sorted(files[cls]):
            img = _decode_image(f"{path}:{name}", data)
            if not first:
                first.update(shape=img.shape[:2], name=name)
            elif img.shape[:2] != first["shape"]:
                raise DatasetFormatError(
                    f"{path}:{name} is {img.shape[1]}x{img.shape[0]} pixels but {first['name']} is "
                    f"{first['shape'][1]}x{first['shape'][0]}: every image must be the same size")
            images.append(img)
            labels.append(label)
    return images, np.asarray(labels, dtype=np.uint8)


def _stack_images(images: list[np.ndarray], shape: tuple[int, int], color: bool) -> np.ndarray:
    x = np.empty((len(images), *shape, 3 if color else 1), dtype=np.uint8)
    for i, img in enumerate(images):
        x[i] = img if img.ndim == 3 else img[..., None]  # broadcasts gray to RGB when needed
    return x


def decode_image_folder(path: str | os.PathLike, max_bytes: int, digest: list | None = None) -> Arrays:
    """(x_train, y_train, x_test, y_test, classes) of an image folder or its archive."""
    path = Path(path)
    dirs: set[str] = set()
    items = _read_members(path, max_bytes, dirs, digest)
    splits = _files_by_class(path, items, dirs, _root_prefix(path, items, dirs))
    classes = tuple(sorted(splits["train"]))
    first: dict = {}
    decoded = [_decode_split(path, splits[split], classes, first) for split in SPLITS]
    color = any(img.ndim == 3 for images, _ in decoded for img in images)
    (train, y_train), (test, y_test) = decoded
    return (_stack_images(train, first["shape"], color), y_train,
            _stack_images(test, first["shape"], color), y_test, classes)
