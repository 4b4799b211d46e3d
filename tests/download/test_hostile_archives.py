"""Issue 15, the data side: every class of hostile or broken archive, folder and image a clear
error naming what is wrong, caps that hold, data never silently wrong (tasks/download/decode.py,
archive.py, inflate.py, image_folder.py). Each test builds its adversarial archive here, byte by
byte where Pillow or tarfile would refuse to write it, and runs the real decoder on it (the
Prefect test runs the real engine). Memory caps are measured with tracemalloc: Python and NumPy
allocations, which is where a header or a decoded image would land. Single images:
tests/core/test_images.py; the cache's manifest: tests/core/test_datacache.py; what a dataset
must be: tests/prepare/test_class_checks.py."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import struct
import tarfile
import tracemalloc
import unicodedata
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from archives import (
    build_image_folder,
    encode_image,
    image_folder_files,
    png,
    png_chunk,
    write_tar,
    zeros_png,
)

from tasks.core.datacache import cache_problems, load_dataset
from tasks.download.config import DatasetConfig
from tasks.download.decode import decode_and_cache, decode_archive
from tasks.download.errors import DatasetFormatError, UnsafeArchiveError
from tasks.download.fetching import fetch

MB = 2**20


# --------------------------------------------------------------------------- builders
def tar_gz(path: Path, members: list[tuple[str | tarfile.TarInfo, bytes | None]], mode: str = "w:gz",
           fmt: int = tarfile.GNU_FORMAT) -> Path:
    """A tar of (name, bytes) members, or (TarInfo, bytes or None) for a hand-made header."""
    with tarfile.open(path, mode, format=fmt) as tf:
        for head, data in members:
            info = head if isinstance(head, tarfile.TarInfo) else tarfile.TarInfo(head)
            if data is not None:
                info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def folder_members(**kwargs) -> list[tuple[str, bytes]]:
    files = image_folder_files(**kwargs)[0]
    return sorted(files.items())


@contextlib.contextmanager
def peak_mib():
    """{'peak': MiB} of Python and NumPy allocations at their highest inside the block."""
    box: dict[str, float] = {}
    tracemalloc.start()
    try:
        yield box
    finally:
        box["peak"] = tracemalloc.get_traced_memory()[1] / MB
        tracemalloc.stop()


# =========================================================================== 1. caps that hold
@pytest.mark.parametrize("header", ["gnu-long-name", "pax"])
@pytest.mark.parametrize("fmt", ["image-folder", "cifar10-binary"])
def test_a_huge_tar_header_is_refused_before_tarfile_reads_it(tmp_path, header, fmt):
    """A 64 MiB long name squeezed into a ~70 KB .tar.gz: refused from its 512-byte block, not
    read whole (it was: 914 MB peak for a 400 MB name), even with a budget far above it."""
    info = tarfile.TarInfo("train/cat/" + "a" * (64 * MB) + ".png" if header == "gnu-long-name" else "x")
    if header == "pax":
        info.pax_headers = {"comment": "b" * (64 * MB)}
    path = tar_gz(tmp_path / "h.tar.gz", [(info, b""), *folder_members()],
                  fmt=tarfile.GNU_FORMAT if header == "gnu-long-name" else tarfile.PAX_FORMAT)
    del info
    assert path.stat().st_size < MB
    with peak_mib() as mem, pytest.raises(UnsafeArchiveError, match=r"header of 67,1\d\d,\d{3} bytes"):
        decode_archive(path, fmt, 1024 * MB)
    if fmt == "image-folder":  # (the .tar.gz of a CIFAR format inflates up to 64 MiB ahead)
        assert mem["peak"] < 8, mem


def test_a_long_but_genuine_member_name_still_decodes(tmp_path):
    long_class = "c" * 300
    members = [(n.replace("/cat/", f"/{long_class}/"), d) for n, d in folder_members()]
    path = tar_gz(tmp_path / "long.tar.gz", members)
    assert decode_archive(path, "image-folder", 100 * MB)[4] == tuple(sorted((long_class, "dog", "frog")))


def test_tar_headers_count_against_the_budget(tmp_path):
    """40 members carrying 512 KiB pax headers each: 20 MiB of headers, 2 KB of data."""
    members = []
    for i, (name, data) in enumerate(folder_members() + [(f"notes/{i}.txt", b"") for i in range(25)]):
        info = tarfile.TarInfo(name)
        info.pax_headers = {"comment": chr(97 + i % 26) * (512 * 1024)}
        members.append((info, data))
    path = tar_gz(tmp_path / "pax.tar.gz", members, fmt=tarfile.PAX_FORMAT)
    with pytest.raises(UnsafeArchiveError, match=r"more than 8 MiB .*headers included"):
        decode_archive(path, "image-folder", 8 * MB)
    assert decode_archive(path, "image-folder", 64 * MB)[4] == ("cat", "dog", "frog")


@pytest.mark.parametrize("compression", ["bz2", "xz"])
def test_a_bzip2_or_xz_bomb_is_inflated_a_bounded_read_at_a_time(tmp_path, compression):
    """64 MiB of zeros is 200 bytes of bzip2 (10 KB of xz): tarfile's own reader inflated the
    whole of one 10 KiB read in one call."""
    path = tar_gz(tmp_path / f"bomb.tar.{compression}",
                  [*folder_members(), ("train/cat/zz.png", bytes(64 * MB))], mode=f"w:{compression}")
    assert path.stat().st_size < 64 * 1024
    with peak_mib() as mem, pytest.raises(UnsafeArchiveError, match=r"more than 8 MiB \(at 'train/cat/zz\.png'"):
        decode_archive(path, "image-folder", 8 * MB)
    assert mem["peak"] < 16, mem  # (xz's 8 MiB dictionary included)


def test_decoded_pixels_count_against_the_budget_before_any_is_decoded(tmp_path):
    """Six 2048x2048 PNGs of ~13 KB each decode to 72 MiB."""
    big = zeros_png(2048, 2048)
    files = {f"{split}/{cls}/{i}.png": big for cls in ("a", "b") for split, n in (("train", 2), ("test", 1))
             for i in range(n)}
    path = write_tar(tmp_path / "big.tar.gz", sorted(files.items()))
    assert path.stat().st_size < 200 * 1024
    with peak_mib() as mem, pytest.raises(UnsafeArchiveError, match=r"6 images of 2048x2048x3 decode to 72\.0 MiB"):
        decode_archive(path, "image-folder", 32 * MB)
    assert mem["peak"] < 4, mem
    x_train, y_train, x_test, _, _ = decode_archive(path, "image-folder", 100 * MB)
    assert x_train.shape == (4, 2048, 2048, 3) and x_test.shape == (2, 2048, 2048, 3)
    assert list(y_train) == [0, 0, 1, 1] and not x_train.any()


def test_an_oversized_image_is_refused_by_name_and_size_before_decoding(tmp_path):
    built = build_image_folder(tmp_path, "dir", files={"train/cat/0000.png": zeros_png(6000, 6000)})
    with peak_mib() as mem, pytest.raises(
            DatasetFormatError, match=r"train/cat/0000\.png is 6000x6000 pixels \(36\.0 MP\): more than "
                                      r"the 4096 pixels a side .* not decoded\. Resize it"):
        decode_archive(built.path, "image-folder", 1024 * MB)
    assert mem["peak"] < 8, mem


def _class_folders(root: Path, n: int) -> Path:
    """An image folder of ``n`` classes, one 1x1 image per class and split."""
    one = encode_image(np.zeros((1, 1, 3), np.uint8))
    for split in ("train", "test"):
        for c in range(n):
            (root / split / f"c{c:03d}").mkdir(parents=True)
            (root / split / f"c{c:03d}" / "0.png").write_bytes(one)
    return root


def test_256_classes_decode(tmp_path):
    _, y_train, _, _, classes = decode_archive(_class_folders(tmp_path / "256", 256), "image-folder", 100 * MB)
    assert len(classes) == 256 and y_train[-1] == 255


def test_more_than_256_classes_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"257 class folders in train/, but labels are "
                                                 r"stored as uint8: at most 256 classes"):
        decode_archive(_class_folders(tmp_path / "257", 257), "image-folder", 100 * MB)


# =========================================================================== 2. silently wrong


def test_a_16_bit_image_folder_decodes_to_the_8_bit_values(tmp_path):
    rng = np.random.default_rng(0)
    files, want = {}, {}
    for split in ("train", "test"):
        for cls in ("a", "b"):
            v = rng.integers(0, 65536, (4, 5), dtype=np.uint16)
            files[f"{split}/{cls}/0.png"], want[(split, cls)] = png(5, 4, 16, 0, v), (v >> 8).astype(np.uint8)
    path = write_tar(tmp_path / "g16.tar.gz", sorted(files.items()))
    x_train, _, x_test, _, _ = decode_archive(path, "image-folder", 100 * MB)
    assert x_train.shape == (2, 4, 5, 1)
    assert np.array_equal(x_train[1, ..., 0], want[("train", "b")])
    assert np.array_equal(x_test[0, ..., 0], want[("test", "a")])


def test_a_linked_class_folder_is_refused_by_name_not_dropped(tmp_path):
    built = build_image_folder(tmp_path / "set", "dir")
    for split in ("train", "test"):
        real = tmp_path / "elsewhere" / split
        real.parent.mkdir(exist_ok=True)
        os.rename(built.path / split / "cat", real)
        os.symlink(real, built.path / split / "cat")
    with pytest.raises(UnsafeArchiveError, match=r"test/cat is a link to a folder .*not followed"):
        decode_archive(built.path, "image-folder", 100 * MB)
    os.unlink(built.path / "test" / "cat")  # a link inside a hidden folder is never entered
    (built.path / "test" / ".cache").mkdir()
    os.rename(tmp_path / "elsewhere" / "test", built.path / "test" / "cat")
    os.symlink(tmp_path, built.path / "test" / ".cache" / "loop")
    with pytest.raises(UnsafeArchiveError, match=r"train/cat is a link to a folder"):
        decode_archive(built.path, "image-folder", 100 * MB)


HIDDEN = {
    "train/.ipynb_checkpoints/0000-checkpoint.png": encode_image(np.zeros((6, 8, 3), np.uint8)),
    "test/.ipynb_checkpoints": None,
    "train/cat/.DS_Store": b"\0\0\0\1Bud1",
    "test/dog/._0000.png": b"\0\5\26\7AppleDouble",
    "train/dog/Thumbs.db": b"\xd0\xcf\x11\xe0",
    ".hidden": b"x",
    "README.md": b"# my images",
}


@pytest.mark.parametrize("kind", ["dir", "tar.gz", "zip"])
def test_hidden_and_os_metadata_entries_are_skipped_and_listed(tmp_path, kind):
    built = build_image_folder(tmp_path, kind, files=HIDDEN)
    notes: dict = {}
    x_train, _, x_test, _, classes = decode_archive(built.path, "image-folder", 100 * MB,
                                                               notes=notes)
    assert classes == ("cat", "dog", "frog")
    assert np.array_equal(x_train, built.x_train) and np.array_equal(x_test, built.x_test)
    got = {s["entry"]: s["reason"] for s in notes["skipped"]}
    got.pop(".hidden/", None)  # the test's tar builder adds a folder entry for a top-level file
    assert got == {"train/.ipynb_checkpoints/": "hidden", "test/.ipynb_checkpoints/": "hidden",
                   "train/cat/.DS_Store": "hidden", "test/dog/._0000.png": "hidden",
                   "train/dog/Thumbs.db": "OS metadata", ".hidden": "hidden",
                   "README.md": "not in <split>/<class>/"}
    assert notes["skipped_entries"] >= 7


def macos_zip(path: Path, files: dict[str, bytes], top: str = "") -> Path:
    """A zip as macOS's Archive Utility makes it: a folder entry for every folder, and beside
    the data a ``__MACOSX/`` mirror of it holding an AppleDouble ``._name`` for every file."""
    pre = f"{top}/" if top else ""
    names = sorted(pre + n for n in files)
    folders = sorted({"/".join(n.split("/")[:i]) + "/" for n in names for i in range(1, n.count("/") + 1)})
    with zipfile.ZipFile(path, "w") as zf:
        for d in folders:
            zf.writestr(d, b"")
        for n in names:
            zf.writestr(n, files[n[len(pre):]])
        zf.writestr(pre + ".DS_Store", b"\0\0\0\1Bud1")
        for d in ["__MACOSX/", *("__MACOSX/" + d for d in folders)]:
            zf.writestr(d, b"")
        for n in names:
            folder, _, base = n.rpartition("/")
            zf.writestr(f"__MACOSX/{folder}/._{base}", b"\0\5\26\7\0\2\0\0Mac OS X")
    return path


@pytest.mark.parametrize("top", ["", "myset"])
def test_a_macos_made_zip_with___MACOSX_decodes(tmp_path, top):
    files, x_train, _, _, y_test, classes = image_folder_files()
    notes: dict = {}
    path = macos_zip(tmp_path / "Archive.zip", files, top)
    got = decode_archive(path, "image-folder", 100 * MB, notes=notes)
    assert got[4] == classes and np.array_equal(got[0], x_train) and np.array_equal(got[3], y_test)
    skipped = {s["entry"]: (s["reason"], s["count"]) for s in notes["skipped"]}
    folders = 1 + (top != "") + 2 + 6  # __MACOSX/, [top/], train/ and test/, their class folders
    assert skipped == {"__MACOSX/": ("macOS metadata", folders + len(files)),
                       f"{top}/.DS_Store".lstrip("/"): ("hidden", 1)}


def test_skipped_entries_are_logged_and_kept_in_the_manifest(tmp_path, caplog):
    built = build_image_folder(tmp_path / "src", "dir", files=HIDDEN)
    cfg = DatasetConfig(format="image-folder", source=str(built.path))
    data = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="cifar"):
        rec = decode_and_cache(fetch(cfg, data), cfg, data)
    manifest = json.loads((Path(rec.path) / "manifest.json").read_text())
    assert {s["entry"] for s in manifest["skipped"]} >= {"train/.ipynb_checkpoints/", "README.md"}
    assert manifest["skipped_entries"] == 7  # the folder's hidden subfolders are not entered
    assert any("skipped 7 entries: " in r.getMessage() and ".hidden (1, hidden)" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_an_image_in_a_subfolder_of_a_class_folder_is_refused_not_dropped(tmp_path):
    extra = {"train/cat/kittens/0000.png": encode_image(np.zeros((6, 8, 3), np.uint8))}
    for kind in ("dir", "zip"):
        built = build_image_folder(tmp_path / kind, kind, files=extra)
        with pytest.raises(DatasetFormatError, match=r"train/cat/kittens/0000\.png is in a subfolder "
                                                     r"of the class folder train/cat/"):
            decode_archive(built.path, "image-folder", 100 * MB)


def test_unicode_class_names_compare_in_nfc_and_keep_their_spelling(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    members = []
    for name, data in folder_members(classes=("cat", "dog", "猫")):
        split, cls, fn = name.split("/")
        cls = {"cat": nfc if split == "train" else nfd}.get(cls, cls)
        members.append((f"{split}/{cls}/{fn}", data))
    path = tar_gz(tmp_path / "u.tar.gz", members, fmt=tarfile.PAX_FORMAT)
    assert decode_archive(path, "image-folder", 100 * MB)[4] == (nfc, "dog", "猫")


def test_a_name_twice_in_an_archive_is_refused(tmp_path):
    members = folder_members()
    path = tar_gz(tmp_path / "twice.tar.gz", members + [members[0]])
    with pytest.raises(DatasetFormatError, match=r"'test/cat/0000\.png' is in the archive more than once"):
        decode_archive(path, "image-folder", 100 * MB)


# =========================================================================== 3. a cache edited by hand


@pytest.mark.engine
def test_engine_rebuilds_the_cache_when_its_manifest_was_edited(prefect_engine, tmp_path):
    from prefect import flow

    from tasks.core.caching import bind_local
    from tasks.download.tasks import decode_dataset

    built = build_image_folder(tmp_path / "src", "tar.gz")
    data = tmp_path / "data"
    cfg = DatasetConfig(format="image-folder", source=str(built.path))
    archive = fetch(cfg, data)
    decode_t = bind_local(decode_dataset, data)

    @flow
    def decode_only():
        state = decode_t(archive, cfg, str(data), return_state=True)
        return state.name, state.result()

    assert decode_only()[0] == "Completed"
    name, rec = decode_only()
    assert name == "Cached"
    mf = Path(rec.path) / "manifest.json"
    manifest = json.loads(mf.read_text())
    manifest["classes"] = ["cat", "dog", "lion"]  # what a hand edit does; Prefect's record still says done
    mf.write_text(json.dumps(manifest))
    name, again = decode_only()
    assert name == "Completed" and again == rec and again.classes == ("cat", "dog", "frog")
    assert cache_problems(rec.path) == [] and load_dataset(rec.path).classes == ("cat", "dog", "frog")


# =========================================================================== the adversarial pass
@pytest.mark.parametrize("name", ["/etc/cron.d/x.png", "__MACOSX/../../evil", "train\\..\\..\\evil.png",
                                  "C:/evil.png"])
def test_zip_members_with_absolute_or_dotdot_names_are_refused(tmp_path, name):
    built = build_image_folder(tmp_path, "zip")
    with zipfile.ZipFile(built.path, "a") as zf:
        zf.writestr(name, b"x")
    with pytest.raises(UnsafeArchiveError, match=r"absolute or '\.\.' path; refused"):
        decode_archive(built.path, "image-folder", 100 * MB)


@pytest.mark.parametrize("kind", ["hardlink", "symlink", "chardev", "fifo"])
def test_tar_links_and_devices_are_refused_even_in_a_hidden_folder(tmp_path, kind):
    info = tarfile.TarInfo(".cache/thing")
    info.type = {"hardlink": tarfile.LNKTYPE, "symlink": tarfile.SYMTYPE, "chardev": tarfile.CHRTYPE,
                 "fifo": tarfile.FIFOTYPE}[kind]
    info.linkname = "/etc/passwd" if "link" in kind else ""
    path = tar_gz(tmp_path / "dev.tar.gz", [*folder_members(), (info, None)])
    with pytest.raises(UnsafeArchiveError, match=r"'\.cache/thing' is (a link|not a regular file)"):
        decode_archive(path, "image-folder", 100 * MB)


def test_a_fifo_in_a_class_folder_is_refused(tmp_path):
    built = build_image_folder(tmp_path, "dir")
    os.mkfifo(built.path / "train" / "cat" / "pipe.png")
    with pytest.raises(UnsafeArchiveError, match=r"pipe\.png is a FIFO \(named pipe\), not a regular file"):
        decode_archive(built.path, "image-folder", 100 * MB)


def _pax_sparse(name: str, map_text: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A GNU sparse member in pax 1.0 form: its data starts with the sparse map."""
    info = tarfile.TarInfo("GNUSparseFile.0/x")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
                        "GNU.sparse.realsize": "5"}
    return info, map_text.ljust(-(-len(map_text) // 512) * 512, b"\0") + b"hello"


def test_a_pax_sparse_member_is_refused(tmp_path):
    """tarfile read a sparse member as a regular file."""
    small = tar_gz(tmp_path / "s.tar.gz", [*folder_members(), _pax_sparse("train/cat/x.png", b"1\n0\n5\n")],
                   fmt=tarfile.PAX_FORMAT)
    with pytest.raises(UnsafeArchiveError, match=r"'train/cat/x\.png' is a GNU sparse file"):
        decode_archive(small, "image-folder", 100 * MB)


def test_a_pax_sparse_member_is_refused_before_its_map_is_read(tmp_path):
    """tarfile read a sparse member's whole map into a list (16 MiB of map: ~70 MB of Python ints)."""
    huge = b"%d\n" % (8 * MB) + b"0\n" * (8 * MB)
    bomb = tar_gz(tmp_path / "m.tar.gz", [_pax_sparse("train/cat/y.png", huge), *folder_members()],
                  fmt=tarfile.PAX_FORMAT)
    with peak_mib() as mem, pytest.raises(UnsafeArchiveError, match="sparse"):
        decode_archive(bomb, "image-folder", 100 * MB)
    assert mem["peak"] < 8, mem


def _noise() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, (8, 6, 3), dtype=np.uint8)


def _cut(data: bytes) -> bytes:
    return data[:len(data) * 2 // 3]


def _iccp_bomb() -> bytes:
    profile = zlib.compress(bytes(64 * MB), 9)  # Pillow caps what a text/ICC chunk may inflate to
    return png(8, 6, pixels=np.zeros((6, 8, 3), np.uint8), extra=png_chunk(b"iCCP", b"icc\0\0" + profile))


@pytest.mark.parametrize("case,data", [
    ("zero-bytes", b""),
    ("truncated-png", _cut(encode_image(_noise()))),  # (a cut in the trailing CRC or IEND
    ("truncated-jpeg", _cut(encode_image(_noise(), "jpg"))),  # leaves every pixel: decoded)
    ("gif", b"GIF89a\x08\x00\x06\x00\x00\x00\x00;"),
    ("text", b"not an image\n"),
    ("iccp-bomb", _iccp_bomb()),
])
def test_a_broken_image_is_a_clear_error_naming_the_file(tmp_path, case, data):
    built = build_image_folder(tmp_path, "tar.gz", files={"train/dog/0001.png": data})
    with peak_mib() as mem, pytest.raises(DatasetFormatError, match=r"train/dog/0001\.png: corrupt or unreadable"):
        decode_archive(built.path, "image-folder", 100 * MB)
    assert mem["peak"] < 32, mem


def test_a_1x1_image_among_larger_ones_is_refused_before_any_is_decoded(tmp_path):
    files = {"test/frog/0001.png": encode_image(np.zeros((1, 1, 3), np.uint8))}
    built = build_image_folder(tmp_path, "dir", files=files, size=(32, 32))
    with pytest.raises(DatasetFormatError, match=r"test/frog/0001\.png is 1x1 pixels but train/cat/0000\.png "
                                                 r"is 32x32"):
        decode_archive(built.path, "image-folder", 100 * MB)


def test_a_class_folder_with_only_hidden_files_in_test_is_empty(tmp_path):
    files = {f"test/dog/{i:04d}.png": None for i in range(2)}
    built = build_image_folder(tmp_path, "dir")
    for f in files:
        (built.path / f).unlink()
    (built.path / "test" / "dog" / ".DS_Store").write_bytes(b"Bud1")
    with pytest.raises(DatasetFormatError, match=r"the class folder test/dog/ is empty"):
        decode_archive(built.path, "image-folder", 100 * MB)


def _grey_then_colour(tmp_path: Path):
    """A tar of 15 grey 8x6 images whose last test image is in colour."""
    grey = np.arange(48, dtype=np.uint8).reshape(8, 6, 1)
    files = {f"{s}/{c}/{i:04d}.png": encode_image(grey) for s, n in (("train", 3), ("test", 2))
             for c in ("cat", "dog", "frog") for i in range(n)}
    colour = np.random.default_rng(5).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    files["test/frog/0001.png"] = encode_image(colour)
    return write_tar(tmp_path / "mixed.tar.gz", sorted(files.items())), grey, colour


def test_grey_images_then_a_colour_one_widen_the_array_to_rgb(tmp_path):
    """The array is sized from the first image; a colour image later widens it, grey ones
    already decoded kept as R = G = B."""
    path, grey, colour = _grey_then_colour(tmp_path)
    x_train, _, x_test, _, _ = decode_archive(path, "image-folder", 100 * MB)
    assert x_train.shape == (9, 8, 6, 3) and np.array_equal(x_train[0], np.repeat(grey, 3, axis=2))
    assert np.array_equal(x_test[-1], colour) and np.array_equal(x_test[0], np.repeat(grey, 3, axis=2))


def test_widening_to_rgb_is_charged_for_both_arrays(tmp_path):
    path, _, _ = _grey_then_colour(tmp_path)
    with tarfile.open(path) as tf:  # the budget charged for the tar: up to its last member's end
        tar_bytes = max(m.offset_data + m.size for m in tf)
    held = tar_bytes + 15 * 48 + 15 * 48 * 3  # while widening, the grey and the RGB array
    with pytest.raises(UnsafeArchiveError, match=r"15 images of 6x8x3 decode to 0\.0 MiB"):
        decode_archive(path, "image-folder", held - 1)
    assert decode_archive(path, "image-folder", held)[0].shape == (9, 8, 6, 3)


def _patch_zip(data: bytes, member: str, **fields) -> bytes:
    """``data`` with the local and central headers of ``member`` rewritten: ``flags``,
    ``method`` or ``size`` (the declared uncompressed size)."""
    out, name = bytearray(data), member.encode()
    for sig, base, name_at in ((b"PK\x03\x04", 0, 30), (b"PK\x01\x02", 2, 46)):
        i = 0
        while (i := out.find(sig, i)) >= 0:
            n = struct.unpack_from("<H", out, i + 26 + base)[0]
            if out[i + name_at:i + name_at + n] == name:
                if "flags" in fields:
                    struct.pack_into("<H", out, i + 6 + base, fields["flags"])
                if "method" in fields:
                    struct.pack_into("<H", out, i + 8 + base, fields["method"])
                if "size" in fields:
                    struct.pack_into("<I", out, i + 22 + base, fields["size"])
            i += 4
    return bytes(out)


def test_a_zip_member_that_lies_about_its_size_is_not_inflated_past_it(tmp_path):
    """A 64 KB deflate member of 64 MiB of zeros declaring 220 bytes: zipfile's read() inflated
    all 64 MiB at once (the budget only saw the 220)."""
    built = build_image_folder(tmp_path, "zip")
    with zipfile.ZipFile(built.path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/cat/0009.png", bytes(64 * MB))
    path = tmp_path / "liar.zip"
    path.write_bytes(_patch_zip(built.path.read_bytes(), "train/cat/0009.png", size=220))
    with peak_mib() as mem, pytest.raises(DatasetFormatError, match=r"'train/cat/0009\.png' is corrupt \(Bad CRC"):
        decode_archive(path, "image-folder", 8 * MB)
    assert mem["peak"] < 4, mem


@pytest.mark.parametrize("case", ["encrypted", "bzip2", "unsupported-method"])
def test_zip_members_zipfile_cannot_bound_or_read_are_clear_errors(tmp_path, case):
    built = build_image_folder(tmp_path, "zip")
    member = "train/dog/0001.png"
    if case == "bzip2":
        with zipfile.ZipFile(built.path, "a", zipfile.ZIP_BZIP2) as zf:
            zf.writestr("train/dog/0009.png", encode_image(np.zeros((8, 6, 3), np.uint8)))
        member, data = "train/dog/0009.png", built.path.read_bytes()
    else:
        data = _patch_zip(built.path.read_bytes(), member,
                          **({"flags": 1} if case == "encrypted" else {"method": 99}))
    (tmp_path / "odd.zip").write_bytes(data)
    want = {"encrypted": r"is encrypted, password required.*re-zip it without a password",
            "bzip2": r"zip compression method 12; only stored and deflate",
            "unsupported-method": r"zip compression method 99; only stored and deflate"}[case]
    with pytest.raises(DatasetFormatError, match=rf"'{member}' .*{want}"):
        decode_archive(tmp_path / "odd.zip", "image-folder", 100 * MB)
