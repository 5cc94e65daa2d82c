"""The adapter stays light: importing it loads no worker module, numpy, numba, matplotlib nor rich.
(Read-only behaviour is proven against a real member in tests/integration/test_adapter_readonly.py;
the trader-only install in tests/integration/test_trader_install.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ADAPTER_DIR = Path(__file__).resolve().parents[2] / "engine_adapter"


def test_importing_the_adapter_loads_nothing_heavy() -> None:
    # The trader-light promise at run time: no worker module, numpy, numba, matplotlib or rich.
    heavy = ("obf_features_worker", "numpy", "numba", "llvmlite", "matplotlib", "rich", "prometheus_client")
    code = ("import sys, engine_adapter, engine_adapter.example; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ADAPTER_DIR.parent, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
