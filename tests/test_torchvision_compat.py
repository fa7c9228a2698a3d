"""torchvision (a CUDA build from the registry) must import on CPU torch everywhere."""
from __future__ import annotations

import subprocess
import sys


def test_fresh_interpreter_imports_torchvision_and_its_dependents():
    code = (
        "import torchvision, transformers, lpips, pyiqa, torch\n"
        "from torchvision.models import resnet18\n"
        "m = resnet18(weights=None).eval()\n"
        "print('ok', torchvision.__version__, m(torch.zeros(1, 3, 32, 32)).shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok" in out.stdout


def test_compat_is_a_noop_when_nothing_is_missing():
    """In a process where the ops already exist (declared once), declaring is idempotent,
    and the hook is not re-armed once torchvision is loaded."""
    code = (
        "import torchvision, sys\n"
        "import pipelines.common.torchvision_compat as c\n"
        "c.install()\n"
        "assert not any(isinstance(f, c._BeforeTorchvision) for f in sys.meta_path)\n"
        "import torch\n"
        "assert hasattr(torch.ops.torchvision, 'nms')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
