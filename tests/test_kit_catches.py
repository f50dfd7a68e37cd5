"""The conformance kit fails broken backends, and passes the same backend unbroken.

``tests/thirdparty/broken-site`` holds a distribution (``snaptree-brokencopy``)
with six backends: one sound, five each breaking one rule of the contract.
The kit runs against all of them in one pytest child process: the sound one
must pass all of it; each broken one must fail the kit test that checks its
rule, with a message that says what is wrong (only that test runs for it, to
keep this fast).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

SITE = pathlib.Path(__file__).parent / "thirdparty" / "broken-site"

#: backend -> (the kit test it must fail, a fragment of the failure message)
EXPECTED = {
    "copyfirst": ("test_group_of_two_volumes",
                  "volume 2 of 2 (copyfirst:"),
    "copymove": ("test_create_list_revert_delete",
                 "a revert must leave every snapshot in place"),
    "copyclaim": ("test_claim_is_the_plugins_own",
                  "was claimed as a volume of backend 'raw'"),
    "copyleave": ("test_failing_commands_leave_nothing_behind",
                  "its snaptree_snapshot call raised and left"),
    "copygone": ("test_failed_delete_is_finished",
                 "a member already gone must not be an error"),
}

KIT_MODULE = '''
import hashlib
import itertools

import pytest

from snaptree.testing import BackendContract, VolumeHandle


def _fill(path, seed):
    with open(path, "wb") as f:
        f.write(hashlib.sha256(str(seed).encode()).digest() * (512 + seed))


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def factory_for(backend, folder):
    counter = itertools.count()

    def factory():
        path = folder / f"disk{next(counter)}.img"
        _fill(path, 0)
        return VolumeHandle(spec=f"{backend}:{path}", fill=lambda seed: _fill(path, seed),
                            digest=lambda: _digest(path))
    return factory
'''

KIT_CLASS = '''

class Test_{backend}(BackendContract):
    @pytest.fixture
    def make_volume(self, tmp_path):
        return factory_for("{backend}", tmp_path)
'''


@pytest.fixture(scope="module")
def kit_outcomes(tmp_path_factory):
    """Run the kit on every backend of the distribution: {backend: {test: failure or None}}."""
    work = tmp_path_factory.mktemp("kit-on-broken")
    (work / "conftest.py").write_text('pytest_plugins = ["snaptree.testing"]\n')
    backends = ["copyok", *EXPECTED]
    (work / "test_kit.py").write_text(
        KIT_MODULE + "".join(KIT_CLASS.format(backend=b) for b in backends))
    junit = work / "junit.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SITE), *(p for p in sys.path if p)]))
    env.pop("SNAPTREE_PLUGINS", None)
    selected = ["test_kit.py::Test_copyok",
                *(f"test_kit.py::Test_{b}::{test}" for b, (test, _) in EXPECTED.items())]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
         "-o", "addopts=", "--rootdir", str(work), *selected],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert junit.exists(), run.stdout + run.stderr
    outcomes: dict[str, dict[str, str | None]] = {b: {} for b in backends}
    for case in ET.parse(junit).getroot().iter("testcase"):
        backend = case.get("classname", "").rsplit("Test_", 1)[-1]
        failed = case.find("failure")
        if failed is None:
            failed = case.find("error")
        outcomes[backend][case.get("name")] = (
            None if failed is None else (failed.get("message") or "") + "\n" + (failed.text or ""))
    return outcomes


def test_the_sound_backend_passes_the_kit(kit_outcomes):
    ran = kit_outcomes["copyok"]
    assert len(ran) > 20, "the kit did not run"
    failures = {name: text for name, text in ran.items() if text is not None}
    assert not failures, "\n\n".join(f"{name}: {text}" for name, text in failures.items())


@pytest.mark.parametrize("backend", sorted(EXPECTED))
def test_the_kit_fails_a_broken_backend(kit_outcomes, backend):
    test, fragment = EXPECTED[backend]
    ran = kit_outcomes[backend]
    assert test in ran, f"the kit has no test {test}: {sorted(ran)}"
    failure = ran[test]
    assert failure is not None, f"the kit passed {backend} in {test}"
    assert fragment in failure, textwrap.shorten(failure, 2000)
