import base64
import gzip
import json
import re

import nibabel as nib
import numpy as np
import pytest

from browser import check_viewer_page
from helpers import TEST_AFFINE, smooth_pair, write_pair
from lpmnet.errors import InputError
from lpmnet.evaluation import viewer
from lpmnet.evaluation.viewer import MAX_VIEWS, ViewerVolume, render_viewer_html, viewer_page
from lpmnet.methods.classical import fuse_classical_files
from lpmnet.volumes.colour import colour_map, rgb_path, to_rgb24
from lpmnet.volumes.io import load_rgb_volume, load_volume, save_volume


def colour_pair(folder, shape=(20, 24, 16)):
    """T1, PET (normalised to [0, 1], as the workflow shows them) and the mean and max colour fusions of one
    synthetic subject."""
    t1, pet = (save_volume(folder / f"{name}.nii.gz", (x - x.min()) / (x.max() - x.min()), TEST_AFFINE)
               for name, x in zip(("T1", "PET"), smooth_pair(shape)))
    fused = {}
    for method in ("mean", "max"):
        fuse_classical_files(method, t1, pet, folder / f"{method}.nii.gz", colour="hot")
        fused[method] = rgb_path(folder / f"{method}.nii.gz")
    return t1, pet, fused


def colour_volumes(t1, pet, fused):
    return [ViewerVolume("T1", "source", t1), ViewerVolume("PET", "source", pet, colour_map="hot"),
            *(ViewerVolume(m, "fused", path, rgb=True) for m, path in fused.items())]


def embedded(page):
    data = json.loads(re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', page,
                                re.S).group(1))
    images = [nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(p["nifti"]))) for p in data["panels"]]
    return data, images


def test_the_page_embeds_every_volume_with_its_affine_and_values(tmp_path):
    t1, pet, fused = colour_pair(tmp_path)
    grey = tmp_path / "lpmnet.nii.gz"
    fuse_classical_files("mean", t1, pet, grey)
    volumes = [*colour_volumes(t1, pet, fused), ViewerVolume("a grey fusion", "fused", grey)]
    data, images = embedded(render_viewer_html(volumes, "x"))
    assert [p["label"] for p in data["panels"]] == ["T1", "PET", "mean", "max", "a grey fusion"]
    assert [p["grey"] for p in data["panels"]] == [True, False, False, False, True]
    for image in images:
        np.testing.assert_allclose(image.affine, load_volume(t1).affine, atol=1e-4)
        assert image.header["sform_code"] == 1 and image.shape == (20, 24, 16)
    lo, hi = data["range"]
    for image, path in ((images[0], t1), (images[4], grey)):  # 256 levels over the grey volumes' range
        original = load_volume(path).data
        assert image.get_data_dtype() == np.uint8 and lo <= original.min() and original.max() <= hi
        np.testing.assert_allclose(image.get_fdata(), original, atol=(hi - lo) / 255 / 2 + 1e-6)
    rgb = lambda image: np.stack([np.asarray(image.dataobj)[c] for c in "RGB"], axis=-1)  # noqa: E731
    np.testing.assert_array_equal(rgb(images[1]), to_rgb24(colour_map(load_volume(pet).data, "hot")))
    np.testing.assert_array_equal(rgb(images[2]), load_rgb_volume(fused["mean"])[0])
    assert lo <= data["window"][0] < data["window"][1] <= hi
    np.testing.assert_allclose(np.array(data["worldToVoxel"]) @ load_volume(t1).affine, np.eye(4)[:3], atol=1e-9)


def test_labels_are_whole_and_each_fusion_has_its_metrics_with_the_best_in_bold(tmp_path):
    t1, pet, fused = colour_pair(tmp_path)
    long_name = "lpmnet-pretrained-finetuned-on-a-very-long-dataset-name"
    volumes = [*colour_volumes(t1, pet, fused)[:2], ViewerVolume(long_name, "fused", fused["mean"], rgb=True),
               ViewerVolume("max", "fused", fused["max"], rgb=True)]
    metrics = {long_name: {"SSIM": 0.9, "Qabf": 0.4, "rSFe": -0.3}, "max": {"SSIM": 0.8, "Qabf": 0.5, "rSFe": 0.1}}
    page = render_viewer_html(volumes, "demo sub-01: T1-PET", metrics=metrics, metrics_note="scored on Y")
    assert f'<span class="label">{long_name}</span>' in page
    assert "through the hot colour map" in page and "scored on Y" in page
    tables = re.findall(r"<table class='metrics'>.*?</table>", page)
    assert len(tables) == 2  # beside the two fusions, not beside the sources
    assert "<b>0.9</b>" in tables[0] and "<b>0.5</b>" in tables[1] and "<b>0.1</b>" in tables[1]
    assert "SSIM&thinsp;\u2191" in tables[0] and "rSFe&thinsp;\u21920" in tables[0]
    assert "scanner (world) coordinates" in page


def test_the_page_needs_no_network_and_its_scripts_are_not_cut(tmp_path):
    t1, pet, fused = colour_pair(tmp_path)
    page = render_viewer_html(colour_volumes(t1, pet, fused), "x")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    # only the page's own three elements end: no embedded text closes one early, whatever a label holds
    volumes = [ViewerVolume("T1", "source", t1), ViewerVolume("m</script><!--<script>", "fused", fused["mean"], rgb=True)]
    page = render_viewer_html(volumes, "x")
    assert page.count("</script") == page.count("</script>\n") == 3 and "<!--" not in page
    assert embedded(page)[0]["panels"][1]["label"] == "m</script><!--<script>"


def test_volumes_on_another_grid_are_refused_naming_the_file(tmp_path):
    t1, pet, _ = colour_pair(tmp_path)
    other = save_volume(tmp_path / "other.nii.gz", smooth_pair((24, 28, 22))[0], TEST_AFFINE)
    volumes = [ViewerVolume("T1", "source", t1), ViewerVolume("x", "fused", other)]
    with pytest.raises(InputError, match="other.nii.gz"):
        viewer_page(volumes, tmp_path / "page.html", "x")
    assert not (tmp_path / "page.html").exists()
    with pytest.raises(InputError, match="not an RGB24"):
        viewer_page([ViewerVolume("T1", "source", t1, rgb=True)], tmp_path / "page.html", "x")


def test_more_views_than_a_browser_keeps_are_refused(tmp_path):
    t1, _ = write_pair(tmp_path)
    with pytest.raises(ValueError, match=f"at most {MAX_VIEWS} views"):
        render_viewer_html([ViewerVolume(f"m{i}", "fused", t1) for i in range(MAX_VIEWS + 1)], "x")


def test_an_altered_copy_of_niivue_is_refused(tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    assets.mkdir()
    for path in viewer.ASSETS.iterdir():
        (assets / path.name).write_bytes(path.read_bytes())
    bundle = assets / f"niivue-{viewer.NIIVUE_VERSION}.umd.js"
    bundle.write_bytes(bundle.read_bytes()[:-10])
    monkeypatch.setattr(viewer, "ASSETS", assets)
    viewer._niivue_script.cache_clear()
    try:
        t1, _ = write_pair(tmp_path)
        with pytest.raises(RuntimeError, match="sha256"):
            render_viewer_html([ViewerVolume("T1", "source", t1)], "x")
    finally:
        viewer._niivue_script.cache_clear()


def test_in_a_browser_every_view_draws_and_a_click_moves_them_all(tmp_path):
    t1, pet, fused = colour_pair(tmp_path, shape=(40, 48, 36))
    grey = tmp_path / "grey.nii.gz"
    fuse_classical_files("max", t1, pet, grey)
    page = viewer_page([*colour_volumes(t1, pet, fused), ViewerVolume("grey max", "fused", grey)],
                       tmp_path / "page.html", "sub-01: T1-PET")
    figures = check_viewer_page(page)
    assert figures["views"] == 5 and "scanner coordinates x =" in figures["location"]
