"""Text in pictures (issue 15; tasks/report/plots.py): class names that matplotlib would parse as
mathtext or LaTeX are drawn as written, whatever the user's matplotlibrc; names a font cannot
draw are named on the page; many classes and large images keep the pictures small."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

import runfolders
from runfolders import T0

AWKWARD = [r"$\foo$", "price $5", r"a_b^c {x}", "100%", "猫", r"\\", "$", "tab\there", "x" * 80,
           "<b>bold</b>", "€ and ü", "#1", "'quote'"]  # ten classes and three more for the grids


def test_every_plot_draws_text_as_written_even_under_a_latex_matplotlibrc():
    import matplotlib
    from PIL import Image

    from tasks.report import index_plots, plots

    for module in (plots, index_plots):
        drawers = [name for name in dir(module) if name.startswith("plot_")]
        assert drawers and all(hasattr(getattr(module, n), "__wrapped__") for n in drawers), drawers
    names = AWKWARD[:10]
    cm = (np.arange(100).reshape(10, 10) % 7).tolist()
    x = np.zeros((10, 32, 32, 3), np.uint8)
    with matplotlib.rc_context({"text.usetex": True, "text.parse_math": True}):  # a user's matplotlibrc
        for png in (plots.plot_confusion(cm, names), plots.plot_confusion(cm, names, normalised=True),
                    plots.plot_image_grid(x, np.arange(10), (np.arange(10) + 1) % 10, np.full(10, 0.5),
                                          names, r"title $\bar$")):
            assert Image.open(io.BytesIO(png)).format == "PNG"

    @plots._drawn
    def settings():
        return matplotlib.rcParams["text.parse_math"], matplotlib.rcParams["text.usetex"]
    assert settings() == (False, False)


@pytest.fixture(scope="module")
def awkward_pages(tmp_path_factory):
    """The report and index of a run whose ten classes have awkward names, in pipeline 猫の."""
    from tasks.report.rendering import regenerate

    root = tmp_path_factory.mktemp("awkward")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runfolders, "CLASSES", tuple(AWKWARD[:10]))  # the fixture builder's classes
        art = root / "artifacts"
        ds = runfolders.make_dataset(root / "data", n_test=30)
        run = runfolders.make_run(art, ds, "猫の", T0, skill=2.0)  # \w takes CJK: a valid pipeline name
        report, index = regenerate(run, art)
    return report.read_text(), index.read_text()


def test_awkward_class_names_print_as_written(awkward_pages):
    from markupsafe import escape

    html, _ = awkward_pages
    for name in AWKWARD[:10]:
        assert str(escape(name)) in html, name


def test_characters_no_font_can_draw_are_named_on_the_pages(awkward_pages):
    from tasks.report.plots import missing_glyphs

    html, index_html = awkward_pages
    if missing_glyphs(["猫"]):  # no CJK font on this machine: the pages say so, naming the characters
        assert 'id="glyph-note"' in html and "猫" in html.split('id="glyph-note"')[1].split("</p>")[0]
        assert "fonts-noto-cjk" in html and 'id="glyph-note"' in index_html
    else:
        assert 'id="glyph-note"' not in html


def test_a_confusion_matrix_of_200_classes_stays_small_and_quick():
    from PIL import Image

    from tasks.report.plots import plot_confusion

    n = 200
    t0 = time.perf_counter()
    png = plot_confusion(np.eye(n, dtype=int).tolist(), [f"class {i}" for i in range(n)])
    w, h = Image.open(io.BytesIO(png)).size
    assert max(w, h) <= 2100 and time.perf_counter() - t0 < 30, (w, h)


def test_a_grid_of_large_images_stays_small():
    from PIL import Image

    from tasks.report.plots import plot_image_grid

    big = np.zeros((8, 1024, 1024, 3), np.uint8)
    png = plot_image_grid(big, np.zeros(8, int), np.zeros(8, int), np.ones(8), ["a"], "big")
    assert Image.open(io.BytesIO(png)).size[0] <= 8 * 160
