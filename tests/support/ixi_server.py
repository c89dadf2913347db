"""A local HTTP server for the download tests: serves files from a folder with Range support.

Files named in ``truncate_once`` are cut off halfway (connection dropped) on their first full request.
"""

import http.server
import threading
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        path = Path(srv.root) / self.path.lstrip("/")
        srv.requests.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        name = path.name
        if status == 200 and name in srv.truncate_once:
            srv.truncate_once.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


class FileServer:
    def __init__(self, root, truncate_once=()):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.root = str(root)
        self.httpd.truncate_once = set(truncate_once)
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def requests(self):
        return self.httpd.requests

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


IXI_IDS = ["IXI002-Guys-0828", "IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236"]


def make_ixi_volumes(folder, ids=IXI_IDS, drop=(("IXI014-HH-1236", "PD"),)):
    """Small IXI-like volumes named as IXI names them; T1 on its own grid (cropped, shifted), T2/PD shared.

    Returns ``{modality: [files]}``; the (id, modality) pairs in ``drop`` are left out.
    """
    import numpy as np

    from lpmnet.volumes.demo import synthesize_subject
    from lpmnet.volumes.io import save_volume

    files = {"T1": [], "T2": [], "PD": []}
    for number, ixi_id in enumerate(ids, start=1):
        s = synthesize_subject(number, seed=3, modalities=("T1", "T2", "PD"), voxel_mm=6.0)
        affine = s["affine"]
        for modality in ("T1", "T2", "PD"):
            if (ixi_id, modality) in drop:
                continue
            data, aff = s["images"][modality], affine.copy()
            if modality == "T1":  # another field of view: cropped by two voxels, origin moved with it
                data = np.ascontiguousarray(data[2:-2, 1:-1, 2:])
                aff[:3, 3] += aff[:3, :3] @ np.array([2, 1, 2])
            files[modality].append(save_volume(Path(folder) / f"{ixi_id}-{modality}.nii.gz", data, aff))
    return files


def make_ixi_tarballs(folder, ids=IXI_IDS, drop=(("IXI014-HH-1236", "PD"),)):
    """IXI-T1.tar, IXI-T2.tar, IXI-PD.tar with the volumes at the archive's top level, as IXI ships them."""
    import tarfile

    folder = Path(folder)
    volumes = folder / "volumes"
    volumes.mkdir(parents=True, exist_ok=True)
    files = make_ixi_volumes(volumes, ids, drop)
    tars = {}
    for modality, paths in files.items():
        tars[modality] = folder / f"IXI-{modality}.tar"
        with tarfile.open(tars[modality], "w") as tar:
            for p in paths:
                tar.add(p, arcname=p.name)
    return tars
