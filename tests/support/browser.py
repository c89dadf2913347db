"""A real browser for the tests of the HTML pages: Debian's headless Chromium (installed by .ci/run through
tests/support/install_chromium.sh), driven by Playwright (a pinned requirement) through its
``executable_path``, so that Playwright never downloads a browser of its own.  Tests skip when either is
missing.  WebGL2 runs on Chromium's software rasteriser (SwiftShader): no GPU is needed."""

from __future__ import annotations

import io
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

#: A Chromium other than the one on PATH (e.g. a local build).
CHROMIUM_VARIABLE = "LPMNET_CHROMIUM"
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
#: A view counts as drawn when this share of its pixels differs from the black background (a fusion may be
#: nearly black under the shared window: a few grey levels still count) ...
MIN_LIT_FRACTION = 0.05
#: ... its pixels are not all one colour (standard deviation over the 0..255 channels) ...
MIN_PIXEL_STD = 3.0
#: ... and it is not an undrawn, transparent canvas over the white page.
MAX_WHITE_FRACTION = 0.9


def chromium_executable():
    """The Chromium to drive: ``$LPMNET_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH; None if none."""
    explicit = os.environ.get(CHROMIUM_VARIABLE)
    if explicit:
        return explicit
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_page(width=1400, height=1000):
    """A new page of a headless Chromium, and the list its console errors and uncaught exceptions go to."""
    exe = chromium_executable()
    if exe is None:
        pytest.skip("no Chromium (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    problems = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
                    if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
            yield page, problems
        finally:
            browser.close()


def drawn(png_bytes) -> bool:
    """Whether a screenshot of a view shows a rendered volume rather than a blank canvas (all background
    black, one colour, or the white page behind an undrawn canvas)."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"), dtype=np.float64)
    lit = (pixels.max(axis=-1) > 2).mean()
    white = (pixels.min(axis=-1) >= 250).mean()
    return bool(lit >= MIN_LIT_FRACTION and pixels.std() >= MIN_PIXEL_STD and white < MAX_WHITE_FRACTION)


def _click_off_centre(page, canvas, dx, dy):
    """Click ``dx``, ``dy`` pixels away from the centre of the first (axial) of a view's three planes."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    before = page.evaluate("JSON.stringify(lpmnetViewer.voxels())")
    page.mouse.click(box["x"] + box["width"] / 6 + dx, box["y"] + box["height"] / 2 + dy)
    page.wait_for_function("(before) => JSON.stringify(lpmnetViewer.voxels()) !== before", arg=before,
                           timeout=10_000)
    # the page reports the new voxel once the views have drawn it
    page.wait_for_function("() => document.getElementById('location').dataset.voxel === "
                           "lpmnetViewer.voxels()[0].join(',')", timeout=10_000)


def check_viewer_page(path, screenshot=None) -> dict:
    """Open a viewer page (:mod:`lpmnet.evaluation.viewer`) and check what a user sees; returns its figures.

    Asserts that it loads with no console error, that every view draws an image, that a click in the first
    view and one in the last move every view to the clicked voxel (the voxel the page reports), and that the
    mouse wheel over a view scrolls every view's slices.
    ``screenshot``: a PNG of the whole page is written there.
    """
    path = Path(path).resolve()
    with browser_page() as (page, problems):
        start = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_function("document.documentElement.dataset.state !== 'loading'", timeout=120_000)
        load_seconds = time.perf_counter() - start
        state = page.evaluate("document.documentElement.dataset.state")
        assert state == "ready", f"{path.name}: {state}: {page.inner_text('#location')}; {problems}"
        canvases = page.query_selector_all("canvas")
        labels = page.evaluate("lpmnetViewer.labels()")
        assert len(canvases) == len(labels) > 0
        for canvas, label in zip(canvases, labels):
            canvas.scroll_into_view_if_needed()
            assert drawn(canvas.screenshot()), f"{path.name}: the view of {label} is blank"
        start_voxels = page.evaluate("lpmnetViewer.voxels()")
        assert len(start_voxels[0]) == 3 and all(v == start_voxels[0] for v in start_voxels)
        moved = []
        for canvas, (dx, dy) in ((canvases[0], (18, 22)), (canvases[-1], (-25, -15))):
            _click_off_centre(page, canvas, dx, dy)
            voxels = page.evaluate("lpmnetViewer.voxels()")
            assert all(v == voxels[0] for v in voxels), f"{path.name}: the views disagree after a click: {voxels}"
            reported = page.get_attribute("#location", "data-voxel")
            assert reported == ",".join(map(str, voxels[0]))
            moved.append(voxels[0])
        assert moved[0] != start_voxels[0] and moved[1] != moved[0]
        # the mouse wheel over a view scrolls the slices of every view
        before = page.evaluate("JSON.stringify(lpmnetViewer.voxels())")
        canvases[0].scroll_into_view_if_needed()
        box = canvases[0].bounding_box()
        page.mouse.move(box["x"] + box["width"] / 6, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, 300)
        page.wait_for_function("(before) => JSON.stringify(lpmnetViewer.voxels()) !== before", arg=before,
                               timeout=10_000)
        voxels = page.evaluate("lpmnetViewer.voxels()")
        assert all(v == voxels[0] for v in voxels), f"{path.name}: the views disagree after a scroll: {voxels}"
        if screenshot:
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(screenshot), full_page=True)
        assert problems == [], f"{path.name}: {problems}"
        return {"load_seconds": load_seconds, "views": len(canvases), "bytes": path.stat().st_size,
                "location": page.inner_text("#location")}
