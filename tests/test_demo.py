"""The README's first command runs this demo: it must work and check what it shows."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.qemu]


def test_demo_runs_the_whole_lifecycle(tmp_path):
    done = subprocess.run([sys.executable, "-m", "snaptree.demo", "--keep", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "disks are byte-identical to snapshot 'installed'" in out
    assert "deleted 'scratch', 'configured'" in out  # prune kept the two newest
    assert "RAM and disks are back at 'booted'" in out
    assert "group 'vm2': clean" in out
    assert out.rstrip().endswith("demo: lifecycle complete; all checks passed")
    assert "Traceback" not in done.stderr
