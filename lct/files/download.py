"""Resumable, checksum-verified downloads (HTTP Range into ``<dest>.part``, renamed only when verified).

Trust policy: a file is used only if it matches a checksum known in advance (sha256, or md5 where
that is what the publisher gives, e.g. CIFAR-10). With no checksum the download is refused: compute
it once from a copy you trust (``sha256sum <file>`` or ``python -c "import lct.files.download as d;
print(d.sha256_file('<file>'))"``) or take the publisher's value, and set it in the workflow config
(``datasets.<name>.source.sha256``).
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class DownloadError(RuntimeError):
    """The download failed or did not verify; the message names the file, the URL and the fix."""


def file_digest(path: str | Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file (read in 1 MiB chunks)."""
    return file_digest(path, "sha256")


def verify(path: str | Path, sha256: str | None = None, md5: str | None = None) -> str | None:
    """None if `path` matches every given checksum, else a description of the mismatch.

    A `sha256` shorter than 64 hex digits is a prefix (torch hub file names carry one, e.g.
    ``vgg16-397923af.pth``) and must match the start of the digest.
    """
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want:
            got = file_digest(path, algo)
            if not got.lower().startswith(want.lower()) or len(want) < 8:
                return f"{algo} {got} != expected {want}"
    return None


def _fetch_once(url: str, part: Path, timeout: float, chunk: int) -> None:
    """Append the missing bytes of `url` to `part` (Range request when `part` is non-empty)."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "lct-download"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the part file is already complete
            return
        raise
    with resp:
        if have and resp.status != 206:  # server ignored Range: start over
            have = 0
        expected = resp.headers.get("Content-Length")
        mode = "ab" if have else "wb"
        got = 0
        with open(part, mode) as f:
            while True:
                buf = resp.read(chunk)
                if not buf:
                    break
                f.write(buf)
                got += len(buf)
        if expected is not None and got < int(expected):
            raise http.client.IncompleteRead(b"", int(expected) - got)


def download(url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None, *,
             config_key: str = "the source's sha256", retries: int = 5, timeout: float = 60.0,
             chunk: int = 1 << 20, trust_on_first_use: bool = False) -> Path:
    """Download `url` to `dest`, resuming ``dest.part``; verify before the rename; return `dest`.

    An existing `dest` that verifies is kept (no network). A checksum mismatch deletes the partial
    file and raises. Interrupted transfers are resumed up to `retries` times (and on a rerun).
    `trust_on_first_use` (only `lct fetch-weights`, for publisher files without a published
    checksum) accepts an unverified file; its sha256 is then recorded in resources/MANIFEST.json
    and every later use is checked against that.
    """
    dest = Path(dest)
    if not sha256 and not md5 and not trust_on_first_use:
        raise DownloadError(
            f"refusing to download {url} without a checksum: set {config_key} in the workflow config "
            f"(compute it with `sha256sum` on a copy you trust, or use the publisher's value)"
        )
    if dest.exists():
        if (trust_on_first_use and not (sha256 or md5)) or verify(dest, sha256, md5) is None:
            return dest
        dest.unlink()  # a stale or corrupt earlier result: fetch again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, chunk)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code not in (408, 429, 500, 502, 503, 504):
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            if attempt == retries:
                raise DownloadError(f"{url}: interrupted {retries + 1} times ({e}); rerun to resume from {part}") from e
            print(f"download: {url} interrupted ({e!r}); resuming from byte "
                  f"{part.stat().st_size if part.exists() else 0}", file=sys.stderr)
            time.sleep(min(2.0**attempt * 0.1, 10.0))
    bad = verify(part, sha256, md5)
    if bad:
        part.unlink()
        raise DownloadError(f"{url}: checksum mismatch ({bad}); removed the partial file {part}. "
                            f"Rerun to fetch it again, or check {config_key}")
    part.replace(dest)
    return dest
