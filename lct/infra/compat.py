"""The one place where `lct` works around the CPU-torch / CUDA-torchvision mismatch.

PyPI's torchvision 0.28.0 wheel is a CUDA build. Next to the CPU wheel of torch 2.13.0 its
C++ extension does not load, and importing it then fails in
`torchvision/_meta_registrations.py` with "operator torchvision::nms does not exist": that
module registers fake (meta) kernels for `torchvision::nms` and `torchvision::qnms`
unconditionally, while its other registrations are skipped when the extension is missing.
diffusers and clean-fid import torchvision, so `lct` cannot import them either.

`ensure_torchvision()` defines the two missing operator schemas with `torch.library` (only
when the extension did not register them) and then imports torchvision. The detection
operators stay unimplemented: `lct` never calls them. With a matching torchvision build
(a CUDA cluster, a conda environment) nothing is defined and this is a plain import.

`import_elatentlpips()` is the second (and last) workaround: elatentlpips 0.2 imports
`pkg_resources.parse_version`, and setuptools >= 81 no longer ships `pkg_resources`. When that
import fails, a module holding only `parse_version` (packaging's `Version` parser, which is what
setuptools' was) stands in while elatentlpips is imported and is removed right after, so no other
package ever sees it.
"""

from __future__ import annotations

import functools

# Schemas of the operators that torchvision's Python side registers fake kernels for even
# when its C++ extension is absent (see torchvision/csrc/ops/nms.cpp).
_MISSING_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keeps the torch.library.Library alive for the life of the process


@functools.cache
def ensure_torchvision():
    """Import torchvision, defining missing operator schemas first when needed."""
    global _LIBRARY
    import torch

    missing = [n for n in _MISSING_SCHEMAS if not _op_exists(torch, n)]
    if missing and not _extension_loads():
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901
        for name in missing:
            _LIBRARY.define(_MISSING_SCHEMAS[name])
    import torchvision

    return torchvision


def import_elatentlpips():
    """Import the `elatentlpips` package (E-LatentLPIPS, Kang et al. 2024), see the module docstring."""
    import importlib
    import sys
    import types

    ensure_torchvision()  # elatentlpips imports torchvision
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse
        sys.modules["pkg_resources"] = shim
        try:
            return importlib.import_module("elatentlpips")
        finally:
            if sys.modules.get("pkg_resources") is shim:
                del sys.modules["pkg_resources"]
    return importlib.import_module("elatentlpips")


def _op_exists(torch, name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def _extension_loads() -> bool:
    """True if torchvision's compiled extension registers its operators itself."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    import glob
    import os

    libs = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))
    if not libs:
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError):
        return False
    return _op_exists(torch, "nms")
