"""``edit``: rename a snapshot or change its description; only the catalog changes."""

from __future__ import annotations

import json

import pytest

from cli_helpers import st
from snaptree import Snaptree
from snaptree.errors import Conflict, GroupNotFound, InvalidInput, SnapshotNotFound


@pytest.fixture
def tree(tmp_path):
    """raw group: a -> b (current), disk holding b's bytes."""
    disk = tmp_path / "d.img"
    disk.write_bytes(b"A" * 8192)
    state = tmp_path / "state"
    with Snaptree(str(state)) as api:
        api.create_group("vm", [f"raw:{disk}"])
        api.create("vm", "a", description="first")
        disk.write_bytes(b"B" * 8192)
        api.create("vm", "b")
    disk.write_bytes(b"C" * 8192)
    return state, disk


def test_rename_keeps_tree_current_and_data(capsys, tree):
    state, disk = tree
    code, out, err = st(capsys, state, "edit", "vm", "a", "--rename", "base", "-d", "clean", "--json")
    assert (code, err) == (0, "")
    edited = json.loads(out)
    assert (edited["name"], edited["description"], edited["current"]) == ("base", "clean", False)
    assert st(capsys, state, "edit", "vm", "b", "--rename", "work")[0] == 0
    code, out, _ = st(capsys, state, "list", "vm", "--tree", "--json")
    [root] = json.loads(out)
    assert root["name"] == "base" and [c["name"] for c in root["children"]] == ["work"]
    assert json.loads(st(capsys, state, "current", "vm", "--json")[1])["name"] == "work"
    assert st(capsys, state, "revert", "vm", "base")[0] == 0  # the data is found by id
    assert disk.read_bytes() == b"A" * 8192
    assert st(capsys, state, "revert", "vm", "work")[0] == 0
    assert disk.read_bytes() == b"B" * 8192
    code, out, _ = st(capsys, state, "check", "vm")
    assert code == 0


def test_description_only_and_clearing(tree):
    state, _ = tree
    with Snaptree(str(state)) as api:
        snap = api.edit("vm", "a", description="")
        assert (snap.name, snap.description) == ("a", "")
        assert api.edit("vm", "a", description="x" * 4096).description == "x" * 4096
        with pytest.raises(InvalidInput, match="at most 4096"):
            api.edit("vm", "a", description="x" * 4097)
        with pytest.raises(InvalidInput, match="NUL"):
            api.edit("vm", "a", description="a\x00b")
        assert api.info("vm", "a").description == "x" * 4096


@pytest.mark.parametrize("args, code, message", [
    (["a"], 2, "nothing to change"),
    (["a", "--rename", "b"], 4, "already has a snapshot named 'b'"),
    (["a", "--rename=-x"], 2, "must not start with '-'"),
    (["a", "--rename", "x/y"], 2, "must not contain '/'"),
    (["a", "--rename", "y" * 65], 2, "at most 64"),
    (["nope", "--rename", "x"], 3, "no snapshot named 'nope'"),
])
def test_bad_input_changes_nothing(capsys, tree, args, code, message):
    state, _ = tree
    before = st(capsys, state, "list", "vm", "--json")[1]
    got, out, err = st(capsys, state, "edit", "vm", *args)
    assert got == code and message in err and out == "" and err.count("\n") == 1
    assert st(capsys, state, "list", "vm", "--json")[1] == before


def test_rename_to_its_own_name_and_unknown_group(tree):
    state, _ = tree
    with Snaptree(str(state)) as api:
        assert api.edit("vm", "a", new_name="a").name == "a"
        with pytest.raises(SnapshotNotFound):
            api.info("vm", "base")
        with pytest.raises(Conflict):
            api.edit("vm", "b", new_name="a")
        with pytest.raises(GroupNotFound):
            api.edit("nope", "a", new_name="c")


def test_rename_to_another_spelling_of_its_own_name(capsys, tmp_path):
    """A name stored decomposed (as typed, or by an earlier snaptree) can be renamed to its
    composed form: that is no clash with itself."""
    import unicodedata
    composed, decomposed = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    disk = tmp_path / "d.img"
    disk.write_bytes(b"A" * 4096)
    state = tmp_path / "state"
    assert st(capsys, state, "group", "create", "vm", f"raw:{disk}")[0] == 0
    assert st(capsys, state, "create", "vm", decomposed)[0] == 0
    code, out, err = st(capsys, state, "edit", "vm", composed, "--rename", decomposed,
                        "-d", "new", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["description"] == "new"
