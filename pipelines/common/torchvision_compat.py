"""Make the registry's CUDA torchvision importable on a CPU-only torch.

Only CUDA builds of torchvision 0.28 exist on the registry. On CPU torch its `_C`
extension fails to load, and `torchvision/_meta_registrations.py` then raises
"operator torchvision::nms does not exist", which also breaks `import transformers`,
`lpips` and `pyiqa`. Declaring the `torchvision::nms` and `torchvision::qnms` operator
schemas before torchvision is imported lets every pure-Python part load (models,
transforms); the C++ ops themselves (nms, roi_align, ...) still raise if called.

`install()` is run at every interpreter start by `d2vr_torchvision_compat.pth`, which
`tools/setup_env.sh` writes into the virtualenv's site-packages, so pytest, Ray workers
and job scripts all get it. It only adds an import hook: nothing is imported until
torchvision is, and on a machine where torch has CUDA (or torchvision's extension loads)
it changes nothing.
"""
from __future__ import annotations

import importlib.abc
import sys

_LIBRARY = None  # keeps the torch.library registration alive


def _extension_loads() -> bool:
    """True when torchvision's own C++ extension loads into this torch."""
    import importlib.util
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True
    folder = list(spec.submodule_search_locations)[0]
    candidates = [f for f in os.listdir(folder) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if not candidates:
        return True
    try:
        torch.ops.load_library(os.path.join(folder, candidates[0]))
        return True
    except (OSError, RuntimeError):
        return False


def declare_missing_ops() -> bool:
    """Declare torchvision's nms/qnms schemas if its extension cannot provide them.

    Returns True when the schemas were declared by us, False when nothing was needed.
    """
    global _LIBRARY
    import torch

    if _LIBRARY is not None:
        return True
    if torch.version.cuda is not None or torch.version.hip is not None:
        return False  # a GPU torch: torchvision's extension is expected to load
    if _extension_loads():
        return False
    _LIBRARY = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs `declare_missing_ops` the first time `torchvision` is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            declare_missing_ops()
        except Exception as exc:  # never block the import itself
            print(f"d2vr torchvision compat: {exc!r}", file=sys.stderr)
        return None  # let the normal finders import torchvision


def install() -> None:
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
