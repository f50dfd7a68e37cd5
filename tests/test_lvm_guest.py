"""Run the devmapper tests in a virtme-ng guest when this kernel lacks device-mapper.

On a host with device-mapper the devmapper-marked tests run directly in the
same session, and this test skips.  Otherwise it boots Debian's kernel once
(TCG, no KVM), runs ``python -m pytest -m devmapper tests`` inside on this
very tree and venv, and fails with the inner output when anything inside
failed.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest

from crash_harness import KillPointStats
from guest.vng import find_kernel, find_vng, host_has_devmapper, run_pytest_in_guest

pytestmark = [pytest.mark.guest, pytest.mark.slow, pytest.mark.root]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INNER_ARGS = ["-m", "devmapper and not guest", "-p", "no:cacheprovider", "-q", "-rfEs",
              "--durations=12",
              "-o", "addopts=--strict-markers -ra", "tests"]
#: Fewer tests than this means the guest did not really run the suite.
MIN_TESTS = 20
#: The suite takes about 10-20 minutes under TCG (the conformance kit's fault tests run
#: children) and the LVM crash walks (tests/test_crash_lvm.py) 4-14 more (the three walks run
#: at once); a busy machine has needed twice that.  CI allows 90 minutes for everything.
GUEST_TIMEOUT = 4000.0


def _junit_counts(path: str) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def _crash_stats(path: str) -> list[KillPointStats]:
    """The kill-point totals the crash walks inside wrote (none if they did not run)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [KillPointStats(**run) for run in json.load(f)]
    except FileNotFoundError:
        return []


def test_devmapper_suite_in_guest(tmp_path, guest_results, crash_totals):
    if host_has_devmapper():
        pytest.skip("this kernel has device-mapper: the devmapper tests run directly")
    if find_vng() is None or find_kernel() is None:
        pytest.skip("needs virtme-ng (vng) and a kernel image under /boot")
    if os.geteuid() != 0:
        pytest.skip("needs root to read the kernel image and make loop devices in the guest")
    out_dir = str(tmp_path / "guest")
    totals_path = os.path.join(out_dir, "crash_totals.json")
    result = run_pytest_in_guest(INNER_ARGS, out_dir, repo=REPO, timeout=GUEST_TIMEOUT,
                                 env={"SNAPTREE_CRASH_TOTALS": totals_path,
                                      "SNAPTREE_CRASH_LVM_THICK":
                                          os.environ.get("SNAPTREE_CRASH_LVM_THICK", "1")})
    # the walks that finished count in the host's summary even when something else failed
    crash_totals.extend(_crash_stats(totals_path))
    output = result.output
    if len(output) > 40000:  # the first failure and the summary matter most
        output = output[:20000] + "\n[... cut ...]\n" + output[-20000:]
    shown = f"--- pytest inside the guest ({result.seconds:.0f}s) ---\n{output}"
    if result.returncode is None:
        pytest.fail(f"the guest never finished pytest\n{shown}\n--- console ---\n"
                    f"{result.console[-8000:]}", pytrace=False)
    if result.returncode != 0:
        pytest.fail(f"devmapper tests failed in the guest (exit {result.returncode})\n{shown}",
                    pytrace=False)
    counts = _junit_counts(result.junit_path)
    guest_results.append({**counts, "seconds": round(result.seconds)})
    assert counts["tests"] - counts["skipped"] >= MIN_TESTS, shown
    assert "no device-mapper" not in result.output, "the guest kernel lacked device-mapper"
    print(shown)


def test_a_boot_that_never_starts_the_script_is_killed(tmp_path, monkeypatch):
    """The guest harness gives up on a hung boot (nothing ran) after
    BOOT_TIMEOUT and kills the whole process group; a boot that reaches the
    script is waited for and its console kept."""
    from guest import vng

    monkeypatch.setattr(vng, "BOOT_TIMEOUT", 1.0)
    out = str(tmp_path)
    pid_file = tmp_path / "child.pid"
    hung = ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    booted, _console = vng._boot(hung, dict(os.environ), out, timeout=30)
    assert not booted
    child = int(pid_file.read_text())
    try:  # the group went with it (dead: gone, or a zombie nobody reaped yet)
        with open(f"/proc/{child}/stat", encoding="ascii") as stat:
            assert stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        pass
    marker = os.path.join(out, vng.STARTED)
    starts = ["sh", "-c", f": > {marker}; sleep 2; echo inner done"]
    booted, console = vng._boot(starts, dict(os.environ), out, timeout=30)
    assert booted and "inner done" in console
