"""The torchvision shim: diffusers, clean-fid and torchvision import on the CPU torch."""

import subprocess
import sys


def test_torchvision_and_dependants_import_in_a_fresh_process():
    code = (
        "from lct.infra.compat import ensure_torchvision\n"
        "tv = ensure_torchvision(); assert ensure_torchvision() is tv\n"
        "from diffusers import AutoencoderKL\n"
        "import cleanfid.fid, torchvision.models\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
