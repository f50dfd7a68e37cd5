"""The plugin system: registration, duplicates, broken plugins, documented hooks."""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

import snaptree
from snaptree import BackendInfo, Capabilities, Snaptree, hookimpl, hookspecs
from snaptree.errors import PluginError
from snaptree.plugins import PluginSet

SITE = pathlib.Path(__file__).parent / "thirdparty" / "site"
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("snaptree_"))


class _Named:
    def __init__(self, name):
        self.name = name

    @hookimpl
    def snaptree_backends(self):
        return [BackendInfo(self.name, "test", Capabilities())]


def test_duplicate_backend_names_name_both_providers():
    plugins = PluginSet([], load_entrypoints=False)
    plugins.register(_Named("twin"), name="first-dist")
    plugins.register(_Named("twin"), name="second-dist")
    with pytest.raises(PluginError, match="first-dist.*second-dist"):
        plugins.backends


def _backend_rows(state) -> dict[str, dict]:
    """``snaptree backends`` by name, with the skipped-plugin warnings kept quiet."""
    import logging
    logging.getLogger("snaptree.plugins").disabled = True
    try:
        with Snaptree(str(state)) as api:
            return {r["name"]: r for r in api.backends()}
    finally:
        logging.getLogger("snaptree.plugins").disabled = False


class _Registers:
    """A plugin whose registration hook returns (or raises) what it is given."""

    def __init__(self, outcome):
        self.outcome = outcome

    @hookimpl
    def snaptree_backends(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize("outcome, reason", [
    ([{"name": "dict"}], "not a BackendInfo"),
    (BackendInfo("bare", "no list around it", Capabilities()), "not a list of BackendInfo"),
    (RuntimeError("no config file"), "RuntimeError: no config file"),
    ([BackendInfo("bad:name", "a colon", Capabilities())], "backend name 'bad:name'"),
    ([BackendInfo("", "empty", Capabilities())], "backend name ''"),
])
def test_a_registration_mistake_skips_that_plugin_only(outcome, reason):
    plugins = PluginSet([], load_entrypoints=False)
    plugins.register(_Named("fine"), name="good-dist")
    plugins.register(_Registers(outcome), name="sloppy-dist")
    assert set(plugins.backends) == {"fine"}
    assert reason in plugins.broken["sloppy-dist"]
    assert plugins.pm.get_plugin("sloppy-dist") is None, "none of its hooks may run"
    with pytest.raises(snaptree.errors.BackendNotFound, match="broken plugins: sloppy-dist"):
        plugins.backend("dict")


def test_an_entry_point_naming_the_class_is_broken_and_says_so(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "snaptree_classy").mkdir(parents=True)
    (site / "snaptree_classy" / "__init__.py").write_text(
        "from snaptree import VolumeBackend\n"
        "class Classy(VolumeBackend):\n"
        "    pass\n"
        "plugin = Classy\n")
    dist = site / "snaptree_classy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: snaptree-classy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[snaptree]\nclassy = snaptree_classy\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SNAPTREE_PLUGINS", "classy,raw")
    rows = _backend_rows(tmp_path / "state")
    assert "write plugin = Classy()" in rows["classy"]["broken"]
    assert "capabilities" in rows["raw"]


def test_broken_entry_point_is_skipped(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "snaptree_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: snaptree-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[snaptree]\nbroken = snaptree_broken_missing_module\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("SNAPTREE_PLUGINS", raising=False)
    rows = _backend_rows(tmp_path / "state")
    assert "ModuleNotFoundError" in rows["broken"]["broken"]
    assert "capabilities" in rows["raw"], "the working plugins still load"


def test_empty_plugin_env_loads_no_entry_points(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPTREE_PLUGINS", "")
    with Snaptree(str(tmp_path / "state")) as api:
        assert api.backends() == []


@pytest.mark.parametrize("name", HOOKS)
def test_every_hookspec_is_documented_for_plugin_authors(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc.splitlines()) >= 3, f"{name} needs a real docstring"
    spec_opts = getattr(getattr(hookspecs, name), "snaptree_spec")
    if spec_opts.get("firstresult"):
        assert "Stops at first non-None result." in doc
    for param in inspect.signature(getattr(hookspecs, name)).parameters:
        assert param in doc or name.startswith(("snaptree_vm_", "snaptree_memory_")), \
            f"{name}: parameter {param} undocumented"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_exercised_by_some_test(name):
    here = pathlib.Path(__file__)
    sources = [p.read_text(encoding="utf-8") for p in here.parent.rglob("*.py") if p != here]
    sources.append((here.parent.parent / "core" / "testing.py").read_text(encoding="utf-8"))
    assert any(re.search(rf"\b{name}\b", s) for s in sources), f"no test names hook {name}"


def test_public_api_is_complete():
    for name in snaptree.__all__:
        assert hasattr(snaptree, name)
    public = {n for n in dir(snaptree) if not n.startswith("_") and not inspect.ismodule(getattr(snaptree, n))}
    assert public <= set(snaptree.__all__) | {"annotations"}


def test_errors_module_draws_the_whole_tree():
    from snaptree import errors
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert name in errors.__doc__, f"{name} missing from the error tree drawing"


def test_backend_without_claim_is_a_clear_plugin_error(tmp_path):
    from snaptree import VolumeBackend

    class Forgetful(VolumeBackend):
        info = BackendInfo("forgetful", "claims nothing", Capabilities())

    with Snaptree(str(tmp_path / "state"), plugins=[Forgetful()]) as api:
        with pytest.raises(PluginError, match="must override VolumeBackend.claim"):
            api.create_group("g", ["forgetful:/x"])
        assert api.list_groups() == []
