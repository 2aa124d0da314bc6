"""`lct fetch-weights`: every pretrained file the pipeline needs, in one resources folder.

Run it where there is internet (the `fetch_weights` rule is a local rule, for login nodes);
every other job reads only local files and calls `require(resources_dir, name)`, which fails at
once, naming `snakemake fetch_weights`, when a file is missing or does not match the manifest.

Layout under the resources folder (``resources/MANIFEST.json`` lists sha256 and size of each file):

- ``sd-vae-ft-ema/``: `stabilityai/sd-vae-ft-ema` via `huggingface_hub.snapshot_download`
  (config.json + diffusion_pytorch_model.safetensors); load with `lct.data.vae.load_vae`.
- ``cleanfid/inception-2015-12-05.pt``: clean-fid's Inception (TorchScript, NVlabs CDN).
- ``torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``: pytorch-fid's legacy Inception,
  used by clean-fid's ``legacy_pytorch`` mode; ``torch/hub/checkpoints/vgg16-397923af.pth``:
  torchvision VGG16 (the Recall fallback only).
- ``stylegan2/vgg16.pt``: NVIDIA's metric VGG16 (TorchScript), the Recall network of pr50k3_full. With ``TORCH_HOME=<resources>/torch`` torch hub finds both
  offline. Their names carry a sha256 prefix, which is checked.
- ``elatentlpips/ckpt/``: E-LatentLPIPS (sd15) weights; the `elatentlpips` package reads them from
  ``./ckpt`` relative to the working directory, so construct it with cwd ``<resources>/elatentlpips``.

Files without a published checksum are trusted on first download and pinned by MANIFEST.json; a
pin never changes by itself: a file that fails its pin is moved aside (``<name>.bad-<time>``) and
downloaded again, and a download that still differs from the pin is refused unless ``--repin``.
`require` verifies the full sha256 of every file of an asset on every use (cached by path, size,
mtime and inode in ``<resources>/.verified.json``, so a job pays the hash once per file version).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lct.files.download import DownloadError, download, file_digest, verify as verify_file

# name -> where it goes (relative to the resources dir), where it comes from, and a known sha256 (prefix).
ASSETS: dict[str, dict[str, Any]] = {
    "inception_clean": {
        "path": "cleanfid/inception-2015-12-05.pt",
        "url": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        "sha256": None,  # cleanfid.downloads_helper.inception_url; no published checksum
    },
    "inception_legacy": {
        "path": "torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth",
        "url": "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",  # cleanfid.inception_pytorch.FID_WEIGHTS_URL
        "sha256": "6726825d",  # torch hub convention: the file name carries the sha256 prefix
    },
    "vgg16": {
        "path": "torch/hub/checkpoints/vgg16-397923af.pth",
        "url": "https://download.pytorch.org/models/vgg16-397923af.pth",  # torchvision VGG16_Weights.IMAGENET1K_V1
        "sha256": "397923af",
    },
    "vgg16_nvidia": {
        "path": "stylegan2/vgg16.pt",
        # StyleGAN2-ADA's metric VGG16 (pr50k3_full), the same host as inception-2015-12-05.pt. NVIDIA
        # publishes no checksum: pinned by MANIFEST.json at first download, verified afterwards.
        "url": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt",
        "sha256": None,
    },
    "elatentlpips_vgg": {
        "path": "elatentlpips/ckpt/sd15_latent_vgg16.pth.tar",
        "url": "https://huggingface.co/Mingguksky/elatentlpips/resolve/main/elatentlpips_ckpt/sd15_latent_vgg16.pth.tar",
        "sha256": None,
    },
    "elatentlpips_head": {
        "path": "elatentlpips/ckpt/sd15_latest_vgg16_tuned.pth",
        "url": "https://huggingface.co/Mingguksky/elatentlpips/resolve/main/elatentlpips_ckpt/"
        "sd15_latest_vgg16_tuned.pth",
        "sha256": None,
    },
}
VAE_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
MANIFEST = "MANIFEST.json"
ALLOW_RANDOM = "LCT_ALLOW_RANDOM_WEIGHTS"  # set only by configs with random_weights_for_tests: true


class MissingResource(FileNotFoundError):
    """A pretrained file is missing or altered; the message names `snakemake fetch_weights`."""


def _hint(resources: Path) -> str:
    return (f"run `snakemake fetch_weights` (or `lct fetch-weights --out {resources}`) on a machine with "
            f"internet, then rerun")


def _load_manifest(resources: Path) -> dict[str, Any]:
    f = resources / MANIFEST
    return json.loads(f.read_text()) if f.is_file() else {"files": {}, "assets": {}}


def _save_manifest(resources: Path, manifest: dict[str, Any]) -> None:
    tmp = resources / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(resources / MANIFEST)


def record(resources: str | Path, name: str, rel_paths: list[str], source: str, random: bool = False) -> None:
    """Add files (relative to `resources`) with their sha256 and size to MANIFEST.json under asset `name`
    (`random`: written by the test-only random-weights mode)."""
    resources = Path(resources)
    m = _load_manifest(resources)
    for rel in rel_paths:
        p = resources / rel
        m["files"][rel] = {"sha256": file_digest(p, "sha256"), "size": p.stat().st_size, "source": source,
                           "asset": name, "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           **({"random": True} if random else {})}
    m["assets"][name] = rel_paths[0] if len(rel_paths) == 1 else str(Path(rel_paths[0]).parent)
    _save_manifest(resources, m)


VERIFIED = ".verified.json"  # (path, size, mtime_ns, inode) -> sha256 already computed


def _digest_cached(resources: Path, rel: str) -> str:
    """sha256 of resources/rel, from the cache when the file's size, mtime and inode are unchanged."""
    f = resources / rel
    st = f.stat()
    key = f"{rel}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    cache_file = resources / VERIFIED
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = file_digest(f, "sha256")
    cache = {k: v for k, v in cache.items() if not k.startswith(rel + "|")}
    cache[key] = digest
    try:  # a unique temporary name: several jobs may verify at once; a read-only folder just skips the cache
        tmp = resources / f"{VERIFIED}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(cache, sort_keys=True))
        tmp.replace(cache_file)
    except OSError:
        pass
    return digest


def require(resources_dir: str | Path, name: str) -> Path:
    """Local path of a pretrained asset (`ASSETS` key, a repo folder such as ``sd-vae-ft-ema``, or a path
    relative to the resources dir), every file of it verified against MANIFEST.json (size and full
    sha256, cached per file version). Missing, unlisted or altered -> `MissingResource` naming
    `snakemake fetch_weights`."""
    resources = Path(resources_dir)
    m = _load_manifest(resources)
    rel = ASSETS[name]["path"] if name in ASSETS else m["assets"].get(name, name)
    p = resources / rel
    if not p.exists() or (p.is_dir() and not any(p.iterdir())):
        raise MissingResource(f"pretrained file {p} ({name}) is missing; {_hint(resources)}")
    listed = {k: v for k, v in m["files"].items() if k == rel or k.startswith(rel.rstrip("/") + "/")}
    if not listed:
        raise MissingResource(f"{p} ({name}) is not listed in {resources / MANIFEST}, so it cannot be verified; "
                              f"{_hint(resources)}")
    if any(v.get("random") for v in listed.values()) and os.environ.get(ALLOW_RANDOM) != "1":
        raise MissingResource(f"{p} ({name}) holds RANDOM weights written by "
                              f"`lct random-weights-for-tests`; only the smoke test may use them ({ALLOW_RANDOM}=1). "
                              f"Remove {resources} and {_hint(resources)}")
    for k, v in listed.items():
        f = resources / k
        if not f.is_file() or f.stat().st_size != v["size"] or _digest_cached(resources, k) != v["sha256"]:
            raise MissingResource(f"{f} does not match {resources / MANIFEST} (missing, truncated or altered); "
                                  f"{_hint(resources)}")
    return p


def check_not_random(folder: str | Path) -> None:
    """Refuse a folder of pretrained files (e.g. a VAE) that the test-only random mode wrote, unless
    LCT_ALLOW_RANDOM_WEIGHTS=1 (the smoke configuration)."""
    folder = Path(folder)
    m = _load_manifest(folder.parent)
    prefix = folder.name.rstrip("/") + "/"
    if any(k.startswith(prefix) and v.get("random") for k, v in m["files"].items()) \
            and os.environ.get(ALLOW_RANDOM) != "1":
        raise MissingResource(f"{folder} holds RANDOM weights written by `lct random-weights-for-tests`; "
                              f"only the smoke test may use them ({ALLOW_RANDOM}=1). Remove {folder.parent} and "
                              f"{_hint(folder.parent)}")


def verify_manifest(resources_dir: str | Path) -> list[str]:
    """Problems found by recomputing every sha256 in MANIFEST.json (empty list: all good)."""
    resources = Path(resources_dir)
    problems = []
    for rel, v in _load_manifest(resources)["files"].items():
        f = resources / rel
        if not f.is_file():
            problems.append(f"{f}: missing")
        elif file_digest(f, "sha256") != v["sha256"]:
            problems.append(f"{f}: sha256 differs from the manifest")
    return problems


def _move_aside(path: Path) -> Path:
    bad = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(bad)
    print(f"fetch-weights: {path} fails its pin; moved to {bad}, downloading again", file=sys.stderr)
    return bad


def fetch_asset(resources: Path, name: str, repin: bool = False) -> Path:
    """One asset, verified against its published checksum or, lacking one, its MANIFEST.json pin (trust on
    first download only). A file failing the pin is moved aside and fetched again; a fresh download that
    still differs from the pin is refused (the publisher's file changed) unless `repin`."""
    a = ASSETS[name]
    dest = resources / a["path"]
    pin = (_load_manifest(resources)["files"].get(a["path"]) or {}).get("sha256")
    if dest.exists() and verify_file(dest, a["sha256"] or pin) is not None:
        _move_aside(dest)
    if dest.exists() or a["sha256"]:
        download(a["url"], dest, sha256=a["sha256"] or pin)
    else:
        download(a["url"], dest, trust_on_first_use=True)
        got = file_digest(dest, "sha256")
        if pin and got != pin and not repin:
            bad = _move_aside(dest)
            raise DownloadError(f"{a['url']}: the download's sha256 {got} differs from the pin {pin} in "
                                f"{resources / MANIFEST} (kept as {bad}); the publisher's file changed. Check it, then "
                                f"`lct fetch-weights --repin ...` to pin the new one")
    record(resources, name, [a["path"]], a["url"])
    return dest


def fid_reference_path(dataset: str, url: str) -> str:
    """Where `--fid-reference` puts a dataset's statistics file, relative to the resources dir."""
    suffix = Path(url.split("?")[0]).suffix or ".npz"
    return f"fid_reference/{dataset}{suffix}"


def fetch_fid_reference(resources: Path, dataset: str, url: str, sha256: str) -> Path:
    """A pytorch-fid statistics file, verified against the sha256 the user trusts (required)."""
    if not sha256 or len(sha256) != 64:
        raise ValueError(f"--fid-reference {dataset}: a 64-hex sha256 is required (evaluation.fid_reference."
                         f"{dataset}.sha256); the statistics decide every FID, so none is trusted unverified")
    rel = fid_reference_path(dataset, url)
    download(url, resources / rel, sha256=sha256, config_key=f"evaluation.fid_reference.{dataset}.sha256")
    record(resources, f"fid_reference_{dataset}", [rel], url)
    return resources / rel


def fetch_vae(resources: Path, repo: str, repin: bool = False) -> Path:
    """`repo` (e.g. stabilityai/sd-vae-ft-ema) into ``resources/<last part of repo>`` via snapshot_download;
    files failing their MANIFEST.json pins are moved aside first, and a download differing from a pin is
    refused unless `repin` (as `fetch_asset`)."""
    from huggingface_hub import snapshot_download

    folder = repo.split("/")[-1]
    pins = {f: (_load_manifest(resources)["files"].get(f"{folder}/{f}") or {}).get("sha256") for f in VAE_FILES}
    for f, pin in pins.items():
        path = resources / folder / f
        if path.exists() and pin and file_digest(path, "sha256") != pin:
            _move_aside(path)
    snapshot_download(repo_id=repo, local_dir=str(resources / folder), allow_patterns=VAE_FILES)
    for f, pin in pins.items():
        got = file_digest(resources / folder / f, "sha256")
        if pin and got != pin and not repin:
            bad = _move_aside(resources / folder / f)
            raise DownloadError(f"{repo}/{f}: sha256 {got} differs from the pin {pin} in {resources / MANIFEST} "
                                f"(kept as {bad}); check it, then `lct fetch-weights --repin ...`")
    record(resources, folder, [f"{folder}/{f}" for f in VAE_FILES], f"huggingface.co/{repo}")
    return resources / folder


_LPIPS_CACHE: dict = {}  # (weights dir, device) -> the loaded network

# E-LatentLPIPS as the authors ran it (docs/METHOD.md section 4): ELatentLPIPS(encoder="sd15",
# augment=None), called on the model's standardized latents with normalize=False, ensembling=False.
ELATENTLPIPS_FILES = ("sd15_latent_vgg16.pth.tar", "sd15_latest_vgg16_tuned.pth")  # trunk, calibrated heads


def load_elatentlpips(weights_dir: str | Path | None, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The package's E-LatentLPIPS network with the weights in `weights_dir`/ckpt (fetch-weights writes
    them to <resources>/elatentlpips/ckpt). The package reads ``./ckpt`` relative to the working
    directory, so it is constructed inside `weights_dir`; it never downloads here."""
    import contextlib

    key = f"{Path(weights_dir).resolve() if weights_dir else None}:{device}"
    if key in _LPIPS_CACHE:
        return _LPIPS_CACHE[key]
    try:
        from lct.infra.compat import import_elatentlpips

        elatentlpips = import_elatentlpips()
    except ImportError as e:
        raise ImportError(
            "loss.distance = 'elatentlpips' needs the package elatentlpips (envs/requirements.txt: "
            "`pip install elatentlpips==0.2`)") from e
    hint = ("run `snakemake fetch_weights` (or `lct fetch-weights --elatentlpips --out <resources>`) on a machine "
            "with internet, then pass the resources folder (`lct train --resources <resources>`)")
    if weights_dir is None:
        raise FileNotFoundError(f"loss.distance = 'elatentlpips' needs its weights; {hint}")
    ckpt = Path(weights_dir) / "ckpt"
    missing = [str(ckpt / f) for f in ELATENTLPIPS_FILES if not (ckpt / f).is_file()]
    if missing:
        raise FileNotFoundError(f"E-LatentLPIPS weights missing: {', '.join(missing)}; {hint}")
    for asset in ("elatentlpips_vgg", "elatentlpips_head"):  # sizes against MANIFEST.json; random refused
        require(Path(weights_dir).parent, asset)
    with contextlib.chdir(weights_dir):
        model = elatentlpips.ELatentLPIPS(encoder="sd15", augment=None, verbose=False)
    model = model.to(device).eval().requires_grad_(False)
    _LPIPS_CACHE[key] = model
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lct fetch-weights", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="resources folder")
    ap.add_argument("--vae", default=None, help="hub repo of the VAE, e.g. stabilityai/sd-vae-ft-ema")
    ap.add_argument("--inception", action="store_true", help="clean-fid and pytorch-fid (legacy) Inception")
    ap.add_argument("--vgg16", action="store_true", help="NVIDIA's metric VGG16 (Recall, pr50k3_full)")
    ap.add_argument("--vgg16-torchvision", action="store_true", help="torchvision VGG16 (Recall fallback)")
    ap.add_argument("--fid-reference", nargs=3, action="append", default=[], metavar=("DATASET", "URL", "SHA256"),
                    help="a pytorch-fid statistics file (repeatable), saved as fid_reference/<DATASET><ext>; the "
                         "sha256 is required (a download is never trusted without one)")
    ap.add_argument("--elatentlpips", action="store_true", help="E-LatentLPIPS sd15 weights")
    ap.add_argument("--verify", action="store_true", help="only check every file against MANIFEST.json")
    ap.add_argument("--repin", action="store_true",
                    help="accept a download whose sha256 differs from its MANIFEST.json pin (a changed publisher file)")
    a = ap.parse_args(argv)
    resources = Path(a.out)
    resources.mkdir(parents=True, exist_ok=True)
    if a.verify:
        problems = verify_manifest(resources)
        print("\n".join(problems) or f"{resources / MANIFEST}: all files verified")
        return 1 if problems else 0
    names = (["inception_clean", "inception_legacy"] if a.inception else []) + (["vgg16_nvidia"] if a.vgg16 else []) \
        + (["vgg16"] if a.vgg16_torchvision else []) + (["elatentlpips_vgg", "elatentlpips_head"] if a.elatentlpips else [])
    try:
        if a.vae:
            print(f"fetch-weights: {fetch_vae(resources, a.vae, repin=a.repin)}")
        for n in names:
            print(f"fetch-weights: {fetch_asset(resources, n, repin=a.repin)}")
        for dataset, url, sha in a.fid_reference:
            print(f"fetch-weights: {fetch_fid_reference(resources, dataset, url, sha)}")
    except Exception as e:  # no internet, hub errors, checksum mismatches: say which and stop
        print(f"lct fetch-weights: {type(e).__name__}: {e}\n(this step needs internet; run it on a login node)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
