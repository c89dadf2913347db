import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from lpmnet.volumes import io as lio
from lpmnet.errors import InputError
from lpmnet.volumes.io import (
    Volume,
    atomic_output,
    atomic_write_json,
    atomic_write_text,
    load_volume,
    require_same_grid,
    same_grid,
    save_volume,
)


def _oblique_affine():
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.2, 0.9, 3.0])
    aff[:3, 3] = [-90.5, 12.25, -40.0]
    return aff


def _raw_header(path):
    with gzip.open(path, "rb") as fh:
        return nib.Nifti1Header.from_fileobj(fh)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_round_trip_keeps_affine_dtype_and_sets_header(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 8, 9))  # float64 in, float32 out
    aff = _oblique_affine()
    out = save_volume(tmp_path / "sub" / "vol.nii.gz", data, aff)
    assert out == tmp_path / "sub" / "vol.nii.gz" and out.is_file()
    assert _leftovers(out.parent) == []

    vol = load_volume(out)
    assert isinstance(vol, Volume)
    assert vol.data.dtype == np.float32 and vol.data.shape == (7, 8, 9)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    np.testing.assert_allclose(vol.zooms, (1.2, 0.9, 3.0), atol=1e-6)

    hdr = _raw_header(out)
    assert hdr.get_data_dtype() == np.float32
    assert float(hdr["scl_slope"]) == 1.0 and float(hdr["scl_inter"]) == 0.0
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1  # scanner
    np.testing.assert_allclose(hdr.get_qform(), aff, atol=1e-5)
    np.testing.assert_allclose(hdr.get_sform(), aff, atol=1e-5)


def test_xform_code_inherited_or_named(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    src = nib.Nifti1Image(data, np.eye(4))
    src.set_sform(np.eye(4), code=4)
    src.set_qform(np.eye(4), code=4)
    save_volume(tmp_path / "a.nii.gz", data, np.eye(4), header=src.header)
    assert int(_raw_header(tmp_path / "a.nii.gz")["sform_code"]) == 4
    save_volume(tmp_path / "b.nii.gz", data, np.eye(4), xform_code="aligned")
    hdr = _raw_header(tmp_path / "b.nii.gz")
    assert int(hdr["sform_code"]) == 2 and int(hdr["qform_code"]) == 2


def test_save_is_byte_deterministic(tmp_path):
    data = np.random.default_rng(1).random((5, 6, 7))
    save_volume(tmp_path / "a.nii.gz", data, np.eye(4))
    save_volume(tmp_path / "b.nii.gz", data, np.eye(4))
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_plain_nii_and_integer_dtype(tmp_path):
    mask = np.zeros((4, 4, 4))
    mask[1:3, 1:3, 1:3] = 1
    out = save_volume(tmp_path / "mask.nii", mask, np.eye(4), dtype=np.uint8)
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), mask)
    with pytest.raises(ValueError):
        save_volume(tmp_path / "bad.nii", mask + 0.5, np.eye(4), dtype=np.uint8)
    with pytest.raises(ValueError):
        save_volume(tmp_path / "bad.txt", mask, np.eye(4))
    assert not (tmp_path / "bad.nii").exists() and not (tmp_path / "bad.txt").exists()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    dest = tmp_path / "out.nii.gz"
    # un-writable data: refused before anything is written
    with pytest.raises(TypeError):
        save_volume(dest, np.empty((3, 3, 3), dtype=object), np.eye(4))
    assert not dest.exists() and _leftovers(tmp_path) == []

    # serialisation fails half-way
    def boom(self):
        raise OSError("simulated write failure")

    monkeypatch.setattr(nib.Nifti1Image, "to_bytes", boom)
    with pytest.raises(OSError, match="simulated"):
        save_volume(dest, np.ones((3, 3, 3)), np.eye(4))
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_failure_after_temp_written_keeps_previous_file(tmp_path, monkeypatch):
    dest = tmp_path / "out.nii.gz"
    save_volume(dest, np.full((3, 3, 3), 1.0) + np.arange(3), np.eye(4))
    before = dest.read_bytes()

    def fail_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(lio.os, "fsync", fail_fsync)  # the temp file exists by then
    with pytest.raises(OSError, match="disk full"):
        save_volume(dest, np.zeros((3, 3, 3)) + np.arange(3) * 7, np.eye(4))
    assert dest.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_output_temp_name(tmp_path):
    dest = tmp_path / "x.nii.gz"
    with atomic_output(dest) as tmp:
        assert tmp.parent == dest.parent
        assert tmp.name.startswith(".x.tmp-") and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"abc")
        assert not dest.exists()
    assert dest.read_bytes() == b"abc" and _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "y.png") as tmp:
            assert tmp.name.endswith(".png")
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert not (tmp_path / "y.png").exists() and _leftovers(tmp_path) == []


def test_atomic_text_and_json(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "t.txt", "héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    obj = {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "d": tmp_path, "e": (1, np.int64(2))}
    j = atomic_write_json(tmp_path / "a" / "o.json", obj)
    loaded = json.loads(j.read_text())
    assert np.isnan(loaded.pop("c"))  # like json.dumps: NaN stays NaN
    assert loaded == {"a": 1.5, "b": [0, 1, 2], "d": str(tmp_path), "e": [1, 2]}
    strict = atomic_write_json(tmp_path / "a" / "s.json", obj, nan_as_null=True)
    assert "NaN" not in strict.read_text() and json.loads(strict.read_text())["c"] is None
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "a" / "bad.json", {"x": object()})
    assert not (tmp_path / "a" / "bad.json").exists() and _leftovers(tmp_path / "a") == []


def _assert_input_error(path, match, **kwargs):
    with pytest.raises(InputError, match=match) as err:
        load_volume(path, **kwargs)
    assert str(path) in str(err.value)
    assert err.value.path == str(path)


def test_bad_inputs_name_the_file(tmp_path):
    _assert_input_error(tmp_path / "missing.nii.gz", "not found")
    _assert_input_error(tmp_path, "folder")

    text = tmp_path / "text.nii.gz"
    text.write_text("this is not an image\n")
    _assert_input_error(text, "not readable as NIfTI")

    good = tmp_path / "good.nii.gz"
    save_volume(good, np.random.default_rng(0).random((8, 8, 8)), np.eye(4))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:400])
    with pytest.raises(InputError) as err:
        load_volume(truncated)
    assert str(truncated) in str(err.value)

    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((4, 4, 4, 3)).astype(np.float32), np.eye(4)), four_d)
    _assert_input_error(four_d, "4D")

    two_d = tmp_path / "two_d.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((4, 4)).astype(np.float32), np.eye(4)), two_d)
    _assert_input_error(two_d, "2D")

    nan = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
    nan[1, 2, 3] = np.nan
    nan_path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(nan, np.eye(4)), nan_path)
    _assert_input_error(nan_path, "NaN")

    inf = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
    inf[0, 0, 0] = np.inf
    inf_path = tmp_path / "inf.nii.gz"
    nib.save(nib.Nifti1Image(inf, np.eye(4)), inf_path)
    _assert_input_error(inf_path, "inf")

    const_path = tmp_path / "const.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 3.0, dtype=np.float32), np.eye(4)), const_path)
    _assert_input_error(const_path, "constant")
    assert load_volume(const_path, allow_constant=True).data.max() == 3.0


def test_singleton_4d_is_squeezed_and_big_endian_int_is_read(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5, 1) - 30
    img = nib.Nifti1Image(data.astype(">i2"), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_data_dtype(">i2")
    path = tmp_path / "be.nii"
    nib.save(img, path)
    vol = load_volume(path)
    assert vol.shape == (3, 4, 5) and vol.data.dtype == np.float32 and vol.data.dtype.isnative
    np.testing.assert_array_equal(vol.data, data[..., 0])


def test_same_grid(tmp_path):
    a = save_volume(tmp_path / "a.nii.gz", np.random.default_rng(0).random((4, 5, 6)), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 1e-5
    b = save_volume(tmp_path / "b.nii.gz", np.random.default_rng(1).random((4, 5, 6)), shifted)
    shifted[0, 3] = 0.5
    c = save_volume(tmp_path / "c.nii.gz", np.random.default_rng(2).random((4, 5, 6)), shifted)
    d = save_volume(tmp_path / "d.nii.gz", np.random.default_rng(3).random((4, 5, 7)), np.eye(4))
    va = load_volume(a)
    assert same_grid(va, b)
    assert same_grid(nib.load(a), load_volume(b))
    assert not same_grid(a, c)
    assert same_grid(a, c, atol=0.6)
    assert not same_grid(a, d)
    assert same_grid(((4, 5, 6), np.eye(4)), va)
    require_same_grid(a, b)
    with pytest.raises(InputError, match="grid") as err:
        require_same_grid(va, load_volume(c))
    assert str(c) in str(err.value)
