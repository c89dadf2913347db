"""A viewer page of one subject's fusion: the two sources and every method's fused volume side by side, each in
three orthogonal planes, all on one voxel, with each method's metric values beside its view.

Built on NiiVue (WebGL2, the viewer of the NIfTI community's web tools; BSD-2-Clause), vendored unmodified
in ``assets/`` (its UMD bundle, see ``NIIVUE_VERSION``) rather than nilearn's brainsprite, because NiiVue
reads the NIfTI files themselves (their affine, so positions are scanner millimetres; RGB24 volumes in
colour) and synchronises several viewers' crosshairs itself, where brainsprite shows pre-rendered sprite
sheets of one volume at a time.

The page is one self-contained HTML file: NiiVue, the page's own script (``assets/viewer.js``) and every
volume are embedded, so it opens from a copied folder or an e-mail without a network or a server.  The
volumes it embeds are display copies: grey volumes quantised to 256 levels over the common range of the grey
volumes (the NIfTI header's ``scl_slope``/``scl_inter`` give back values in the files' units), colour
volumes as RGB24, each with its file's affine.

In the page: a click or a drag in any view moves every view to that voxel (and the mouse wheel scrolls the
slices of all views); the window (lowest and highest grey value shown) is shared by every grey view; a line
states the crosshair's voxel and scanner coordinates, and each view the value under it.  A browser keeps a
limited number of WebGL contexts per page (16 in Chromium), hence :data:`MAX_VIEWS`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from lpmnet.errors import InputError
from lpmnet.evaluation.comparison import METRIC_ARROWS, METRIC_DIRECTIONS, rank_key
from lpmnet.evaluation.tables import format_number
from lpmnet.metrics import PAPER_METRICS
from lpmnet.volumes.io import atomic_write_text, load_rgb_volume, load_volume, require_same_grid, rgb24_array

__all__ = ["viewer_page", "render_viewer_html", "read_panel_metrics", "ViewerVolume", "PANEL_METRICS", "MAX_VIEWS",
           "NIIVUE_VERSION"]

ASSETS = Path(__file__).with_name("assets")
NIIVUE_VERSION = "0.69.0"
#: The vendored bundle's digest, checked before it is embedded (an edited or truncated copy is refused).
NIIVUE_SHA256 = "47b896b77ec4a5be3ef1949c33ad393b6f45629921f326c279000bcf51bdb4af"
#: The metrics shown beside each fused view: the eight the LPM-Net paper reports.
PANEL_METRICS = PAPER_METRICS
#: Views one page can hold: Chromium drops the oldest WebGL context beyond 16 per page.
MAX_VIEWS = 16
#: The highest of the embedded display copies' 256 grey levels.
TOP_LEVEL = 255
#: The percentiles of the grey voxels that bound the initial shared window ...
WINDOW_PERCENTILES = (0.5, 99.5)
#: ... taken on every WINDOW_STRIDE-th voxel along each axis (the window needs no more, the memory does).
WINDOW_STRIDE = 2


@dataclass(frozen=True)
class ViewerVolume:
    """One view of the page: its ``label``, ``role`` ("source" or "fused"), the NIfTI file, and how it is shown:
    ``rgb`` (an RGB24 file), ``colour_map`` (a grey volume in [0, 1] shown through that matplotlib colour map,
    as :mod:`lpmnet.volumes.colour` maps a functional volume), else grey."""

    label: str
    role: str
    path: Path
    rgb: bool = False
    colour_map: str | None = None

    @property
    def grey(self) -> bool:
        return not self.rgb and self.colour_map is None


@lru_cache(maxsize=1)
def _niivue_script() -> str:
    path = ASSETS / f"niivue-{NIIVUE_VERSION}.umd.js"
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != NIIVUE_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest}, expected {NIIVUE_SHA256} (NiiVue {NIIVUE_VERSION} as "
                           "published); reinstall the package")
    return data.decode("utf-8")


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _script_safe(text: str) -> str:
    """Script text that can stand inside a ``<script>`` element: a literal ``</`` would end the element early."""
    return text.replace("</", "<\\/")


def _json_script(data) -> str:
    """JSON that can stand inside a ``<script>`` element whatever its strings hold (no ``<`` at all)."""
    return json.dumps(data).replace("<", "\\u003c")


def _nifti_base64(data: np.ndarray, affine: np.ndarray, *, slope: float = 1.0, inter: float = 0.0) -> str:
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(slope, inter)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return base64.b64encode(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)).decode("ascii")


def _grey_range(volumes: list[np.ndarray]) -> tuple[float, float, float, float]:
    """(lowest, highest) value of the grey volumes (finite: :func:`load_volume` refuses others), and the
    initial window within them."""
    if not volumes:
        return 0.0, 1.0, 0.0, 1.0
    lo, hi = min(float(v.min()) for v in volumes), max(float(v.max()) for v in volumes)
    if not hi > lo:
        hi = lo + 1.0
    step = slice(None, None, WINDOW_STRIDE)
    sample = np.concatenate([v[step, step, step].ravel() for v in volumes])
    w_lo, w_hi = (float(p) for p in np.percentile(sample, WINDOW_PERCENTILES))
    if not w_hi > w_lo:
        w_lo, w_hi = lo, hi
    return lo, hi, w_lo, w_hi


def _quantised(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.rint(np.clip((data - lo) * (TOP_LEVEL / (hi - lo)), 0, TOP_LEVEL)).astype(np.uint8)


def _metric_cells(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, str]]:
    """Per method and metric, the value's text, bold for the best fused method of this subject."""
    best = {}
    for name in PANEL_METRICS:
        direction = METRIC_DIRECTIONS.get(name)
        values = {m: v[name] for m, v in metrics.items() if np.isfinite(v.get(name, np.nan))}
        if not values or direction is None:
            continue
        score = {m: rank_key(v, direction) for m, v in values.items()}
        top = min(score.values())
        best[name] = {m for m, s in score.items() if s == top}
    cells = {}
    for method, values in metrics.items():
        row = {}
        for name in PANEL_METRICS:
            text = format_number(values.get(name, np.nan))
            row[name] = f"<b>{text}</b>" if method in best.get(name, ()) else text
        cells[method] = row
    return cells


def _metrics_table(cells: dict[str, str]) -> str:
    head = "".join(f"<th>{html.escape(n)}&thinsp;{METRIC_ARROWS.get(METRIC_DIRECTIONS.get(n, ''), '')}</th>"
                   for n in PANEL_METRICS)
    body = "".join(f"<td>{cells[n]}</td>" for n in PANEL_METRICS)
    return f"<table class='metrics'><tr>{head}</tr><tr>{body}</tr></table>"


def render_viewer_html(volumes: list[ViewerVolume], title: str, *, metrics=None, metrics_note: str = "") -> str:
    """The viewer page of ``volumes`` (all on one voxel grid) as HTML text.

    ``metrics``: fused label -> {metric: value} (the :data:`PANEL_METRICS` shown beside that view; the best
    value of each metric among the page's fused volumes in bold); ``metrics_note`` says what they are.
    """
    if not volumes:
        raise ValueError("a viewer page needs at least one volume")
    if len(volumes) > MAX_VIEWS:
        raise ValueError(f"a viewer page holds at most {MAX_VIEWS} views (a browser's WebGL contexts per page); "
                         f"got {len(volumes)}")
    for vol in volumes:
        if vol.role not in ("source", "fused"):
            raise ValueError(f"{vol.label}: role must be 'source' or 'fused', not {vol.role!r}")
    loaded = [_load(vol) for vol in volumes]
    reference = loaded[0]
    for vol, (data, affine) in zip(volumes[1:], loaded[1:]):
        require_same_grid((reference[0].shape, reference[1]), (data.shape, affine), name=vol.path)
    greys = [data for vol, (data, _) in zip(volumes, loaded) if vol.grey]
    lo, hi, w_lo, w_hi = _grey_range(greys)
    slope = (hi - lo) / TOP_LEVEL

    cells = _metric_cells(metrics or {})
    panels, blocks = [], []
    for index, (vol, (data, affine)) in enumerate(zip(volumes, loaded)):
        if vol.grey:
            encoded = _nifti_base64(_quantised(data, lo, hi), affine, slope=slope, inter=lo)
        else:
            encoded = _nifti_base64(rgb24_array(data), affine)
        shown = "colour" if vol.rgb else f"through the {vol.colour_map} colour map" if vol.colour_map else "grey"
        panels.append({"id": f"view{index}", "label": vol.label, "grey": vol.grey, "nifti": encoded})
        table = _metrics_table(cells[vol.label]) if vol.label in cells else ""
        blocks.append(f"""<section class="panel {vol.role}" id="panel-view{index}">
<h2><span class="label">{html.escape(vol.label)}</span> <span class="role">{vol.role}, {html.escape(shown)}</span></h2>
<div class="view"><canvas id="view{index}" aria-label="{html.escape(vol.label)}: axial, coronal and sagittal planes"></canvas></div>
<p class="value" id="value-view{index}">&nbsp;</p>
{table}
</section>""")
    data = {"panels": panels, "range": [lo, hi], "window": [w_lo, w_hi], "step": slope,
            "worldToVoxel": np.linalg.inv(reference[1])[:3].tolist()}
    shape = "\u00d7".join(str(n) for n in reference[0].shape[:3])
    zooms = "\u00d7".join(f"{z:.3g}" for z in nib.affines.voxel_sizes(reference[1]))
    note = f"<p class='note'>{html.escape(metrics_note)}</p>" if metrics_note else ""
    return f"""<!DOCTYPE html>
<html lang="en" data-state="loading">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
{_asset("viewer.css")}
</style>
</head>
<body>
<header>
<h1>{html.escape(title)}</h1>
<p class="note">Every view shows the axial, coronal and sagittal plane through one voxel: a click or a drag in
any plane moves every view there, the mouse wheel scrolls the slices. Neurological convention (patient's left on
the left). Grid {shape} voxels of {zooms} mm; positions in the files' scanner (world) coordinates. Grey views
share one window; the embedded copies hold 256 grey levels over {format_number(lo)} to {format_number(hi)}
(the NIfTI files hold the full values).</p>
{note}
<div class="controls">
<label>window low <input type="range" id="window-low" min="{lo}" max="{hi}" step="{slope}" value="{w_lo}"></label>
<label>window high <input type="range" id="window-high" min="{lo}" max="{hi}" step="{slope}" value="{w_hi}"></label>
<output id="window-text"></output>
<button type="button" id="recentre">back to the centre</button>
</div>
<p id="location" data-voxel="" data-mm="">loading&hellip;</p>
</header>
<main class="panels">
{chr(10).join(blocks)}
</main>
<script type="application/json" id="viewer-data">{_json_script(data)}</script>
<script>
{_script_safe(_niivue_script())}
</script>
<script>
{_script_safe(_asset("viewer.js"))}
</script>
</body>
</html>
"""


def _load(vol: ViewerVolume) -> tuple[np.ndarray, np.ndarray]:
    if vol.rgb:
        return load_rgb_volume(vol.path)
    volume = load_volume(vol.path, allow_constant=True)
    if vol.colour_map is not None:
        from lpmnet.volumes.colour import colour_map, to_rgb24

        return to_rgb24(colour_map(volume.data, vol.colour_map)), volume.affine
    return volume.data, volume.affine


def viewer_page(volumes: list[ViewerVolume], out_html, title: str, *, metrics=None, metrics_note: str = "") -> Path:
    """Write :func:`render_viewer_html`'s page to ``out_html`` (atomically) and return its path.

    An unreadable volume, or one on another voxel grid than the first, is an :class:`InputError` naming it.
    """
    out = Path(out_html)
    atomic_write_text(out, render_viewer_html(volumes, title, metrics=metrics, metrics_note=metrics_note))
    return out


def read_panel_metrics(path, convention: str = "lpmnet") -> dict[str, float]:
    """The :data:`PANEL_METRICS` of one metrics file (:func:`lpmnet.metrics.records.read_metrics_json`) in
    ``convention``; NaN for those it lacks."""
    from lpmnet.metrics.records import read_metrics_json

    doc = read_metrics_json(path)
    entry = doc["conventions"].get(convention)
    if entry is None:
        raise InputError(path, f"no values in the {convention!r} convention")
    return {name: float(entry["values"].get(name, np.nan)) for name in PANEL_METRICS}
