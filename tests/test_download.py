"""lct.download against a loopback HTTP server with Range support: correct, corrupted, interrupted."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from lct.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB


class _Handler(http.server.BaseHTTPRequestHandler):
    state: dict = {}

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        st = self.state
        st["ranges"].append(self.headers.get("Range"))
        body = st["body"]
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if st["cut"] > 0:  # interrupted transfer: send a third of the bytes, then drop the connection
            st["cut"] -= 1
            self.wfile.write(body[start : start + (len(body) - start) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture()
def server():
    state = {"ranges": [], "cut": 0, "body": PAYLOAD}
    handler = type("H", (_Handler,), {"state": state})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/file.bin", state
    srv.shutdown()
    srv.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_correct_file(server, tmp_path):
    url, state = server
    dest = download(url, tmp_path / "f.bin", sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    download(url, dest, md5=MD5)  # already there and verified: no request
    assert state["ranges"] == [None]


def test_corrupted_file_removed(server, tmp_path):
    url, state = server
    state["body"] = PAYLOAD[:-1] + b"\x00"  # one flipped byte
    with pytest.raises(DownloadError, match="checksum mismatch.*removed the partial file"):
        download(url, tmp_path / "f.bin", sha256=SHA)
    assert not (tmp_path / "f.bin.part").exists() and not (tmp_path / "f.bin").exists()


def test_interrupted_transfer_resumes(server, tmp_path):
    url, state = server
    state["cut"] = 2  # the first two responses break off
    dest = download(url, tmp_path / "f.bin", sha256=SHA, retries=3)
    assert dest.read_bytes() == PAYLOAD
    assert state["ranges"][0] is None
    third = len(PAYLOAD) // 3
    assert state["ranges"][1] == f"bytes={third}-"  # resumed where the first attempt stopped
    assert len(state["ranges"]) == 3


def test_rerun_resumes_existing_part(server, tmp_path):
    url, state = server
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])  # left by an earlier, killed run
    download(url, tmp_path / "f.bin", sha256=SHA)
    assert state["ranges"] == ["bytes=1000-"]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_refuses_without_checksum(tmp_path):
    with pytest.raises(DownloadError, match=r"datasets\.x\.source\.sha256"):
        download("http://127.0.0.1:9/none", tmp_path / "f", config_key="datasets.x.source.sha256")
