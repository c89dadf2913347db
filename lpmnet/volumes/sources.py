"""Public dataset sources: IXI downloads, BraTS-style folders, generic paired folders, manifests.

* :func:`download` fetches one URL to a file with resume of interrupted transfers (HTTP ``Range``),
  retries with exponential back-off, progress in the log and a checksum check (``md5:<hex>`` or
  ``sha256:<hex>``; a bare 32/64-digit hex string is taken as MD5/SHA-256). The data go to
  ``<dest>.part`` first; a checksum mismatch deletes the partial file and raises
  :class:`~lpmnet.errors.InputError`. :func:`url_nifti_extension` tells the NIfTI extension of the file a
  URL names, which a downloaded volume keeps.
* :func:`extract_tar` unpacks an archive and refuses members that would land outside the target
  folder (absolute paths, ``..``, links, devices).
* :func:`ixi_subjects` pairs the extracted IXI volumes by IXI id (``IXI002-Guys-0828``).
* :func:`brats_subjects` and :func:`folder_subjects` index existing folders.
* :func:`write_manifest` / :func:`read_manifest`: the one subjects table every dataset becomes
  (columns dataset, subject, modality, path, checksum).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from lpmnet.errors import InputError
from lpmnet.volumes.io import atomic_write_text, file_digest, nifti_suffix, read_tsv_rows

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("dataset", "subject", "modality", "path", "checksum")
IXI_MODALITIES = ("T1", "T2", "PD")
IXI_NAME = re.compile(r"^(IXI\d{3}-[A-Za-z]+-\d{4})-(T1|T2|PD)\.nii\.gz$")
BRATS_MODALITIES = {"t1": "T1", "t1ce": "T1CE", "t2": "T2", "flair": "FLAIR", "seg": "seg"}
BRATS_NAME = re.compile(r"^(BraTS20\d*_(?:Training_|Validation_)?\d+)_(t1|t1ce|t2|flair|seg)\.nii(?:\.gz)?$")
CHUNK = 1 << 16


def label(raw):
    """A BIDS-safe subject label: letters and digits of ``raw`` ("IXI002-Guys-0828" -> "IXI002Guys0828")."""
    out = re.sub(r"[^A-Za-z0-9]", "", str(raw))
    if not out:
        raise InputError(raw, "no letters or digits to make a subject label from")
    return out


# ---------------------------------------------------------------------------------------------- checksums

def parse_checksum(spec):
    """``"md5:<hex>"``, ``"sha256:<hex>"`` or a bare hex digest -> (algorithm, lowercase hex)."""
    spec = str(spec).strip()
    algo, sep, digest = spec.partition(":")
    if not sep:
        algo, digest = {32: "md5", 64: "sha256"}.get(len(spec), ""), spec
    algo = algo.lower()
    if algo not in ("md5", "sha256") or not re.fullmatch(r"[0-9a-fA-F]+", digest) or \
            len(digest) != {"md5": 32, "sha256": 64}[algo]:
        raise ValueError(f"checksum {spec!r}: expected md5:<32 hex digits> or sha256:<64 hex digits>")
    return algo, digest.lower()


def path_checksum(path):
    """``md5:<hex>`` of a file, of a folder's files (in sorted order), or "" for a missing path."""
    p = Path(path)
    if p.is_file():
        return f"md5:{file_digest(p, 'md5')}"
    if p.is_dir():
        h = hashlib.md5()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0" + file_digest(f, "md5").encode())
        return f"md5:{h.hexdigest()}"
    return ""


# ---------------------------------------------------------------------------------------------- download

def download(url, dest, checksum=None, *, retries=5, backoff=1.0, timeout=60.0, progress_every=10.0):
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify ``checksum``, then rename into place."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = parse_checksum(checksum) if checksum else None
    attempt = 0
    while True:
        try:
            _fetch(url, part, timeout, progress_every)
            break
        except (urllib.error.URLError, OSError, ConnectionError, TimeoutError) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code == 416 and part.exists():
                break  # the partial file is already complete
            if isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code not in (408, 429):
                raise InputError(url, f"download failed: HTTP {err.code} {err.reason}") from err
            attempt += 1
            if attempt > retries:
                raise InputError(url, f"download failed after {retries} retries: {err}") from err
            wait = backoff * 2 ** (attempt - 1)
            have = part.stat().st_size if part.exists() else 0
            log.warning("%s: %s; retry %d/%d in %.1f s (resuming at byte %d)", url, err, attempt, retries, wait, have)
            time.sleep(wait)
    if expected:
        algo, digest = expected
        actual = file_digest(part, algo)
        if actual != digest:
            part.unlink()
            raise InputError(dest, f"{algo} checksum mismatch: expected {digest}, got {actual} "
                                   f"(downloaded from {url}); the download was deleted. Run again; a second "
                                   f"mismatch means that the address serves another file than the checksum names")
        log.info("%s: %s checksum ok", dest.name, algo)
    os.replace(part, dest)
    return dest


def url_nifti_extension(url):
    """".nii.gz" or ".nii" for a URL whose path names a NIfTI file (a query such as ``?raw=true`` aside), else "":
    the extension tells the reader whether the bytes are gzipped, so a download must keep it."""
    return nifti_suffix(urlsplit(url).path).lower()


def _fetch(url, part, timeout, progress_every):
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if have and response.status != 206:
            log.info("%s: server ignored the range request, restarting from byte 0", url)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if have:
            log.info("%s: resuming at byte %d", url, have)
        done, last = have, time.monotonic()
        with open(part, "ab" if have else "wb") as out:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                out.write(block)
                done += len(block)
                if time.monotonic() - last >= progress_every:
                    last = time.monotonic()
                    log.info("%s: %s", url, _progress(done, total))
        log.info("%s: %s", url, _progress(done, total))
        if total is not None and done < total:
            raise ConnectionError(f"connection closed after {done} of {total} bytes")


def _progress(done, total):
    if total:
        return f"{done / 1e6:.1f} of {total / 1e6:.1f} MB ({100 * done / total:.0f}%)"
    return f"{done / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------- extraction

def extract_tar(archive, target):
    """Unpack ``archive`` into the folder ``target``; refuse path traversal, links and special files.

    Extraction goes to a temporary sibling folder renamed into place once complete.
    """
    archive, target = Path(archive), Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                name = PurePosixPath(m.name)
                if name.is_absolute() or ".." in name.parts or m.name.startswith(("/", "\\")):
                    raise InputError(archive, f"refusing member {m.name!r}: it would be written outside {target}")
                if not (m.isfile() or m.isdir()):
                    raise InputError(archive, f"refusing member {m.name!r}: links and special files are not allowed")
            tar.extractall(tmp, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except tarfile.TarError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(archive, f"not a readable tar archive: {err}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------- indexing

def ixi_subjects(folders, modalities=IXI_MODALITIES, max_subjects=None):
    """Pair IXI volumes by IXI id. ``folders``: modality -> folder of that modality's files.

    Returns ``(rows, skipped)``: rows ``(subject, modality, path)`` of the subjects that have every
    modality (the first ``max_subjects`` by id), and ``{IXI id: [missing modalities]}``.
    """
    found = {}
    for modality in modalities:
        for path in sorted(Path(folders[modality]).rglob("*.nii.gz")):
            m = IXI_NAME.match(path.name)
            if m and m.group(2) == modality:
                found.setdefault(m.group(1), {})[modality] = path
    rows, skipped = [], {}
    for ixi_id in sorted(found):
        missing = [m for m in modalities if m not in found[ixi_id]]
        if missing:
            skipped[ixi_id] = missing
            continue
        if max_subjects is not None and len(rows) >= max_subjects * len(modalities):
            continue  # over the limit; incomplete subjects are still reported
        rows += [(label(ixi_id), m, str(found[ixi_id][m])) for m in modalities]
    return rows, skipped


def brats_subjects(root):
    """Index a BraTS2020/2021 folder: ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "BraTS folder not found")
    rows = []
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(case.iterdir()):
            m = BRATS_NAME.match(f.name)
            if m and m.group(1) == case.name:
                rows.append((label(case.name), BRATS_MODALITIES[m.group(2)], str(f)))
    if not rows:
        raise InputError(root, "no BraTS case folders (<case>/<case>_t1.nii.gz, ...) found")
    return rows


def folder_subjects(root, patterns):
    """Index one sub-folder per subject; ``patterns`` maps modality -> regex searched in file names.

    A file matching several modalities, or a modality matched by several files, is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    compiled = {m: re.compile(p) for m, p in patterns.items()}
    rows = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        seen = {}
        for f in sorted(x for x in sub.iterdir() if not x.name.startswith(".")):
            hits = [m for m, rx in compiled.items() if rx.search(f.name)]
            if len(hits) > 1:
                raise InputError(f, f"file name matches modalities {', '.join(hits)}; make the patterns exclusive")
            if hits:
                if hits[0] in seen:
                    raise InputError(f, f"{hits[0]} also matches {seen[hits[0]].name}")
                seen[hits[0]] = f
        rows += [(label(sub.name), m, str(f)) for m, f in seen.items()]
    if not rows:
        raise InputError(root, "no subject sub-folder has a file matching the modality patterns")
    return rows


# ---------------------------------------------------------------------------------------------- manifest

def write_manifest(path, dataset, rows, checksums=True, extra=None):
    """Write the subjects table (dataset, subject, modality, path, checksum) atomically.

    ``extra``: per row, a dict of further columns (a BIDS dataset's participant and session, its
    participants.tsv columns and sidecar fields), written after the standard ones; "n/a" where a row has none.
    """
    extra = extra or [{} for _ in rows]
    columns = list(dict.fromkeys(c for more in extra for c in more if c not in MANIFEST_COLUMNS))
    lines = ["\t".join((*MANIFEST_COLUMNS, *columns))]
    for (subject, modality, p), more in zip(rows, extra, strict=True):
        cells = [" ".join(str("n/a" if more.get(c) is None else more[c]).split()) for c in columns]
        lines.append("\t".join((dataset, subject, modality, str(p), path_checksum(p) if checksums else "", *cells)))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)


def read_manifest(path):
    """Rows of a manifest as dicts; a missing column is an error naming the file."""
    return read_tsv_rows(path, MANIFEST_COLUMNS)
