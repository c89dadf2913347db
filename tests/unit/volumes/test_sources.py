"""Unit tests of lpmnet.volumes.sources: download (resume, retries, checksums), safe extraction, indexing, manifest."""

import hashlib
import io
import tarfile

import pytest

from ixi_server import FileServer
from lpmnet.errors import InputError
from lpmnet.volumes.sources import (brats_subjects, download, extract_tar, folder_subjects, ixi_subjects, label,
                            parse_checksum, read_manifest, url_nifti_extension, write_manifest)


def _payload(n=300_000):
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def test_download_resumes_a_truncated_transfer(tmp_path, caplog):
    served = tmp_path / "served"
    served.mkdir()
    data = _payload()
    (served / "IXI-T1.tar").write_bytes(data)
    dest = tmp_path / "out" / "IXI-T1.tar"
    with FileServer(served, truncate_once={"IXI-T1.tar"}) as srv, caplog.at_level("INFO"):
        download(f"{srv.url}/IXI-T1.tar", dest, f"sha256:{hashlib.sha256(data).hexdigest()}", backoff=0.01)
        requests = list(srv.requests)
    assert dest.read_bytes() == data and not dest.with_name("IXI-T1.tar.part").exists()
    assert requests[0][1] is None and requests[1][1] == f"bytes={len(data) // 2}-"
    assert "resuming at byte" in caplog.text and "checksum ok" in caplog.text and "100%" in caplog.text


def test_download_resumes_a_partial_file_left_by_an_earlier_run(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    data = _payload(100_000)
    (served / "a.tar").write_bytes(data)
    dest = tmp_path / "a.tar"
    dest.with_name("a.tar.part").write_bytes(data[:40_000])
    with FileServer(served) as srv:
        download(f"{srv.url}/a.tar", dest, hashlib.md5(data).hexdigest())
        assert srv.requests == [("/a.tar", "bytes=40000-")]
    assert dest.read_bytes() == data


def test_a_wrong_checksum_deletes_the_partial_file(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "a.tar").write_bytes(_payload(50_000))
    dest = tmp_path / "a.tar"
    with FileServer(served) as srv, pytest.raises(InputError, match="md5 checksum mismatch: expected 0{32}"):
        download(f"{srv.url}/a.tar", dest, "md5:" + "0" * 32)
    assert not dest.exists() and not dest.with_name("a.tar.part").exists()


def test_download_gives_up_after_the_retries(tmp_path):
    with FileServer(tmp_path) as srv:
        with pytest.raises(InputError, match="HTTP 404"):
            download(f"{srv.url}/absent.tar", tmp_path / "x.tar", retries=2, backoff=0.01)
        url = srv.url
    with pytest.raises(InputError, match="after 2 retries"):  # the server is gone: connection refused
        download(f"{url}/absent.tar", tmp_path / "x.tar", retries=2, backoff=0.01)


@pytest.mark.parametrize("url, extension", [
    ("https://host/data/T1.nii.gz", ".nii.gz"), ("https://host/T1.NII.GZ?raw=true", ".nii.gz"),
    ("http://127.0.0.1:8000/avg152T1.nii", ".nii"), ("https://host/T1.nii#part", ".nii"),
    ("https://host/T1.mnc", ""), ("https://host/T1.nii.gz/view", ""), ("https://host/get?file=T1.nii.gz", ""),
])
def test_the_nifti_extension_of_a_url(url, extension):
    assert url_nifti_extension(url) == extension


@pytest.mark.parametrize("spec, expected", [
    ("md5:" + "A" * 32, ("md5", "a" * 32)), ("b" * 64, ("sha256", "b" * 64)), ("c" * 32, ("md5", "c" * 32))])
def test_parse_checksum(spec, expected):
    assert parse_checksum(spec) == expected


@pytest.mark.parametrize("spec", ["sha1:" + "a" * 40, "md5:abc", "z" * 32])
def test_parse_checksum_refuses_bad_specs(spec):
    with pytest.raises(ValueError, match="expected md5"):
        parse_checksum(spec)


def _tar_with(path, name, kind=tarfile.REGTYPE, linkname=""):
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        content = b"x" * 10 if kind == tarfile.REGTYPE else b""
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize("name, kind, linkname", [
    ("../evil.nii.gz", tarfile.REGTYPE, ""), ("/abs/evil.nii.gz", tarfile.REGTYPE, ""),
    ("a/../../evil", tarfile.REGTYPE, ""), ("link", tarfile.SYMTYPE, "/etc/passwd")])
def test_extraction_refuses_path_traversal(tmp_path, name, kind, linkname):
    archive = _tar_with(tmp_path / "bad.tar", name, kind, linkname)
    with pytest.raises(InputError, match="refusing member"):
        extract_tar(archive, tmp_path / "out" / "x")
    assert not (tmp_path / "out" / "x").exists() and not (tmp_path / "evil.nii.gz").exists()
    assert not list((tmp_path / "out").glob(".*"))


def test_extraction_of_a_good_archive(tmp_path):
    archive = _tar_with(tmp_path / "ok.tar", "IXI002-Guys-0828-T1.nii.gz")
    out = extract_tar(archive, tmp_path / "IXI-T1")
    assert (out / "IXI002-Guys-0828-T1.nii.gz").read_bytes() == b"x" * 10
    with pytest.raises(InputError, match="not a readable tar"):
        extract_tar(tmp_path / "IXI-T1" / "IXI002-Guys-0828-T1.nii.gz", tmp_path / "y")


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_ixi_pairing_by_id_skips_incomplete_subjects_and_limits(tmp_path):
    ids = ["IXI002-Guys-0828", "IXI012-HH-1211", "IXI013-HH-1212", "IXI014-IOP-1149"]
    folders = {m: tmp_path / m for m in ("T1", "T2", "PD")}
    for ixi_id in ids:
        for m in ("T1", "T2", "PD"):
            if (ixi_id, m) != ("IXI012-HH-1211", "PD"):
                _touch(folders[m] / f"{ixi_id}-{m}.nii.gz")
    _touch(folders["T1"] / "README.txt")
    rows, skipped = ixi_subjects(folders)
    assert skipped == {"IXI012-HH-1211": ["PD"]}
    assert sorted({r[0] for r in rows}) == ["IXI002Guys0828", "IXI013HH1212", "IXI014IOP1149"]
    assert ("IXI002Guys0828", "T1", str(folders["T1"] / "IXI002-Guys-0828-T1.nii.gz")) in rows
    rows, _ = ixi_subjects(folders, max_subjects=2)
    assert sorted({r[0] for r in rows}) == ["IXI002Guys0828", "IXI013HH1212"] and len(rows) == 6
    rows, skipped = ixi_subjects(folders, modalities=("T1", "T2"))
    assert len(rows) == 8 and not skipped


@pytest.mark.parametrize("case", ["BraTS20_Training_001", "BraTS2021_00000"])
def test_brats_indexing(tmp_path, case):
    for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
        _touch(tmp_path / case / f"{case}_{suffix}.nii.gz")
    _touch(tmp_path / case / "notes.txt")
    _touch(tmp_path / "other" / "x.nii.gz")
    rows = brats_subjects(tmp_path)
    assert {r[1] for r in rows} == {"T1", "T1CE", "T2", "FLAIR", "seg"} and {r[0] for r in rows} == {label(case)}
    with pytest.raises(InputError, match="no BraTS case"):
        brats_subjects(tmp_path / "other")


def test_generic_folders_with_regex_patterns(tmp_path):
    for s in ("subjA", "subjB"):
        _touch(tmp_path / s / f"{s}_mprage.nii.gz")
        _touch(tmp_path / s / f"{s}_flair_ax.nii.gz")
    patterns = {"T1": r"mprage", "FLAIR": r"flair"}
    rows = folder_subjects(tmp_path, patterns)
    assert sorted(rows) == sorted((s, m, str(tmp_path / s / f"{s}_{n}.nii.gz"))
                                  for s in ("subjA", "subjB") for m, n in (("T1", "mprage"), ("FLAIR", "flair_ax")))
    with pytest.raises(InputError, match="matches modalities"):
        folder_subjects(tmp_path, {"T1": r"\.nii", "FLAIR": "flair"})


def test_manifest_round_trip(tmp_path):
    f = tmp_path / "a.nii.gz"
    f.write_bytes(b"abc")
    out = write_manifest(tmp_path / "m" / "manifest.tsv", "ds", [("s1", "T1", f), ("s1", "T2", tmp_path / "absent")])
    rows = read_manifest(out)
    assert rows[0] == {"dataset": "ds", "subject": "s1", "modality": "T1", "path": str(f),
                       "checksum": "md5:" + hashlib.md5(b"abc").hexdigest()}
    assert rows[1]["checksum"] == ""


def test_manifest_extra_columns(tmp_path):
    """A BIDS dataset's rows carry more columns (participant, session, participants.tsv, sidecar fields)."""
    files = []
    for name in ("a", "b", "c"):
        files.append(tmp_path / f"{name}.nii.gz")
        files[-1].write_bytes(name.encode())
    rows = [("01_ses-1", "T1", files[0]), ("01_ses-1", "PET", files[1]), ("02", "T1", files[2])]
    extra = [{"participant_id": "sub-01", "session": "1", "age": "30"},
             {"participant_id": "sub-01", "session": "1", "age": "30", "TracerName": "H2O",
              "Manufacturer": "Siemens\tBiograph\nmMR"},
             {"participant_id": "sub-02", "session": "n/a", "SkullStripped": True,
              "path": "/elsewhere", "subject": "x"}]  # a standard column's name is not repeated
    out = write_manifest(tmp_path / "manifest.tsv", "ds", rows, extra=extra)
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and all(len(line.split("\t")) == 11 for line in lines)
    assert lines[0].split("\t") == ["dataset", "subject", "modality", "path", "checksum", "participant_id", "session",
                                    "age", "TracerName", "Manufacturer", "SkullStripped"]
    got = read_manifest(out)
    assert [(r["subject"], r["modality"], r["path"]) for r in got] == [(s, m, str(p)) for s, m, p in rows]
    assert got[0]["checksum"] == "md5:" + hashlib.md5(b"a").hexdigest()
    assert {k: got[0][k] for k in ("participant_id", "session", "age", "TracerName", "Manufacturer",
                                   "SkullStripped")} == {
        "participant_id": "sub-01", "session": "1", "age": "30", "TracerName": "n/a", "Manufacturer": "n/a",
        "SkullStripped": "n/a"}
    assert got[1]["TracerName"] == "H2O" and got[1]["Manufacturer"] == "Siemens Biograph mMR"  # one line
    assert got[2]["age"] == "n/a" and got[2]["session"] == "n/a" and got[2]["SkullStripped"] == "True"
    assert got[2]["path"] == str(files[2]) and got[2]["subject"] == "02"


def test_a_manifest_without_extra_columns_is_as_before(tmp_path):
    f = tmp_path / "a.nii.gz"
    f.write_bytes(b"abc")
    rows = [("s1", "T1", f)]
    for extra in (None, [{}]):
        out = write_manifest(tmp_path / "manifest.tsv", "ds", rows, checksums=False, extra=extra)
        assert out.read_text() == f"dataset\tsubject\tmodality\tpath\tchecksum\nds\ts1\tT1\t{f}\t\n"
