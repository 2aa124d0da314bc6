"""lct.files.download against a loopback HTTP server with Range support: correct, corrupted, interrupted."""

from __future__ import annotations

import functools
import hashlib
import json
import http.server
import threading

import pytest

from lct.files.download import DownloadError, download

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


# ----------------------------------------------------------------------------- lct.weights.fetch (offline parts)

from lct.weights import fetch  # noqa: E402


def test_require_missing_names_fetch_weights(tmp_path):
    with pytest.raises(fetch.MissingResource, match="snakemake fetch_weights"):
        fetch.require(tmp_path, "vgg16")
    with pytest.raises(fetch.MissingResource, match="snakemake fetch_weights"):
        fetch.require(tmp_path, "sd-vae-ft-ema")


def test_fetch_asset_checks_hub_prefix_and_manifest(server, tmp_path, monkeypatch):
    url, state = server
    good = {"path": "torch/hub/checkpoints/vgg16-x.pth", "url": url, "sha256": SHA[:8]}
    monkeypatch.setitem(fetch.ASSETS, "vgg16", good)
    p = fetch.fetch_asset(tmp_path, "vgg16")
    assert fetch.require(tmp_path, "vgg16") == p
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["files"][good["path"]]["sha256"] == SHA and manifest["assets"]["vgg16"] == good["path"]
    assert fetch.verify_manifest(tmp_path) == []

    # An altered file is caught by the manifest; a truncated one even without rehashing.
    p.write_bytes(PAYLOAD[:-1] + b"\x01")  # same size: only the full sha256 sees it, on every use
    with pytest.raises(fetch.MissingResource, match="does not match"):
        fetch.require(tmp_path, "vgg16")
    assert fetch.verify_manifest(tmp_path) and fetch.main(["--out", str(tmp_path), "--verify"]) == 1
    p.write_bytes(PAYLOAD[:10])
    with pytest.raises(fetch.MissingResource, match="fetch_weights"):
        fetch.require(tmp_path, "vgg16")

    # A wrong hash prefix (the file name's) rejects the download and removes it.
    monkeypatch.setitem(fetch.ASSETS, "vgg16", {**good, "path": "other/v.pth", "sha256": "00000000"})
    with pytest.raises(DownloadError, match="removed the partial file"):
        fetch.fetch_asset(tmp_path, "vgg16")
    assert not (tmp_path / "other" / "v.pth").exists()


def test_fetch_weights_offline_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(fetch.ASSETS, "inception_clean",
                        {"path": "cleanfid/i.pt", "url": "http://127.0.0.1:9/i.pt", "sha256": None})
    monkeypatch.setattr(fetch, "download", functools.partial(download, retries=0))
    assert fetch.main(["--out", str(tmp_path), "--inception"]) == 1
    assert "needs internet" in capsys.readouterr().err
    assert not (tmp_path / "cleanfid" / "i.pt").exists()


def test_a_pin_is_never_moved_by_a_damaged_file(server, tmp_path, monkeypatch):
    """An asset without a published checksum (NVIDIA's vgg16.pt): pinned at first download. A damaged
    copy (same size) is refused by `require`; following its advice (`fetch-weights`) moves the bad file
    aside and downloads again, and the pin stays; a publisher file that changed is refused unless --repin."""
    url, state = server
    asset = {"path": "stylegan2/vgg16.pt", "url": url, "sha256": None}
    monkeypatch.setitem(fetch.ASSETS, "vgg16_nvidia", asset)
    p = fetch.fetch_asset(tmp_path, "vgg16_nvidia")
    pin = json.loads((tmp_path / "MANIFEST.json").read_text())["files"][asset["path"]]["sha256"]
    assert pin == SHA and fetch.require(tmp_path, "vgg16_nvidia") == p
    p.write_bytes(b"\x00" * len(PAYLOAD))  # damaged, same size
    with pytest.raises(fetch.MissingResource, match="does not match"):
        fetch.require(tmp_path, "vgg16_nvidia")
    assert fetch.fetch_asset(tmp_path, "vgg16_nvidia") == p  # the fix the error names
    assert p.read_bytes() == PAYLOAD and list(p.parent.glob("vgg16.pt.bad-*"))
    assert json.loads((tmp_path / "MANIFEST.json").read_text())["files"][asset["path"]]["sha256"] == pin
    assert fetch.require(tmp_path, "vgg16_nvidia") == p
    # the publisher's file changed: refused, the pin kept; --repin accepts it
    state["body"] = PAYLOAD[::-1]
    p.write_bytes(b"\x01" * len(PAYLOAD))
    with pytest.raises(DownloadError, match="differs from the pin"):
        fetch.fetch_asset(tmp_path, "vgg16_nvidia")
    assert json.loads((tmp_path / "MANIFEST.json").read_text())["files"][asset["path"]]["sha256"] == pin
    fetch.fetch_asset(tmp_path, "vgg16_nvidia", repin=True)
    assert json.loads((tmp_path / "MANIFEST.json").read_text())["files"][asset["path"]]["sha256"] != pin
