"""A third-party backend, installed as its own distribution, passes the kit.

``tests/thirdparty/site`` holds an installed distribution in miniature (a
dist-info with an entry point and its module); putting it on ``sys.path`` is
all it takes for snaptree to find it, as ``pip install`` would.
"""

from __future__ import annotations

import hashlib
import itertools
import pathlib

import pytest

from snaptree import Snaptree
from snaptree.testing import BackendContract, VolumeHandle

SITE = pathlib.Path(__file__).parent / "thirdparty" / "site"


@pytest.fixture
def thirdparty_installed(monkeypatch):
    monkeypatch.syspath_prepend(str(SITE))
    monkeypatch.delenv("SNAPTREE_PLUGINS", raising=False)


def _fill(path: pathlib.Path, seed: int) -> None:
    for child in list(path.iterdir()):
        child.unlink()
    for i in range(3 + seed % 4):
        (path / f"file{i}").write_bytes(hashlib.sha256(f"{seed}/{i}".encode()).digest() * (i + 1))


def _digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    for child in sorted(path.iterdir()):
        h.update(child.name.encode() + b"\0" + child.read_bytes())
    return h.hexdigest()


class TestDirCopyContract(BackendContract):
    @pytest.fixture
    def make_volume(self, tmp_path, thirdparty_installed):
        counter = itertools.count()

        def factory():
            path = tmp_path / f"tree{next(counter)}"
            path.mkdir()
            return VolumeHandle(spec=f"dircopy:{path}", fill=lambda s: _fill(path, s),
                                digest=lambda: _digest(path))

        return factory


def test_entry_point_is_discovered(tmp_path, thirdparty_installed):
    with Snaptree(str(tmp_path / "state")) as api:
        names = {b["name"]: b for b in api.backends()}
    assert "dircopy" in names
    assert names["dircopy"]["provider"] == "dircopy"
    assert "raw" in names, "built-ins come from the same entry-point group"


def test_env_var_narrows_plugins(tmp_path, thirdparty_installed, monkeypatch):
    monkeypatch.setenv("SNAPTREE_PLUGINS", "dircopy")
    with Snaptree(str(tmp_path / "state")) as api:
        assert sorted(b["name"] for b in api.backends()) == ["dircopy"]


def test_without_the_distribution_it_is_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("SNAPTREE_PLUGINS", raising=False)
    with Snaptree(str(tmp_path / "state")) as api:
        assert "dircopy" not in {b["name"] for b in api.backends()}
