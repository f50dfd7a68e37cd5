"""Names that look alike are one name: stored, looked up and compared in NFC,
also where a catalog holds names an earlier snaptree stored as typed; and
characters that draw nothing are refused."""

from __future__ import annotations

import sqlite3
import unicodedata

import pytest

from cli_helpers import st
from snaptree import Snaptree
from snaptree.errors import Busy, Conflict, InvalidInput
from snaptree.locking import group_lock
from snaptree.names import check_name

NFC = unicodedata.normalize("NFC", "caf\u00e9")
NFD = unicodedata.normalize("NFD", NFC)


def test_the_two_spellings_differ():
    assert NFC != NFD and len(NFD) == len(NFC) + 1


def test_a_name_is_kept_in_its_normal_form(tmp_path, disks):
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group(NFD, [f"raw:{disks[0]}"])
        assert [g.name for g in api.list_groups()] == [NFC]
        snap = api.create(NFC, NFD)
        assert snap.name == NFC and api.current(NFD).name == NFC
        assert [s.name for s in api.list(NFD)] == [NFC]
        for group in (NFC, NFD):
            for name in (NFC, NFD):
                assert api.info(group, name).snapshot_id == snap.snapshot_id
        with pytest.raises(Conflict):
            api.create(NFD, NFC)
        with pytest.raises(Conflict):
            api.create_group(NFC, [f"raw:{disks[1]}"])
        api.create(NFC, "other")
        with pytest.raises(Conflict):
            api.edit(NFC, "other", new_name=NFD)
        renamed = api.edit(NFC, "other", new_name="th\u00e9-" + NFD)
        assert renamed.name == unicodedata.normalize("NFC", renamed.name)
        disks[0].write_bytes(b"x" * 65536)
        api.revert(NFD, NFD)
        assert disks[0].read_bytes() == b"A" * 65536
        assert api.delete(NFD, NFD) == [NFC]


def test_the_cli_takes_either_spelling(capsys, tmp_path, disks):
    state = tmp_path / "state"
    assert st(capsys, state, "group", "create", NFC, f"raw:{disks[0]}")[0] == 0
    assert st(capsys, state, "create", NFC, NFC)[0] == 0
    code, _, err = st(capsys, state, "create", NFD, NFD)
    assert code == Conflict.exit_code and err.count("\n") == 1
    code, out, _ = st(capsys, state, "info", NFD, NFD)
    assert code == 0 and f"name:        {NFC}" in out


def _respell(state, old, new):
    """Rename group and snapshot ``old`` to ``new`` in the catalog, as an
    earlier snaptree that stored names as typed would have left them."""
    db = sqlite3.connect(f"{state}/catalog.sqlite", isolation_level=None)
    db.execute("PRAGMA foreign_keys = OFF")
    db.execute("BEGIN")
    db.execute("UPDATE groups SET name=? WHERE name=?", (new, old))
    for table in ("volumes", "snapshots", "journal"):
        db.execute(f"UPDATE {table} SET group_name=? WHERE group_name=?", (new, old))
    db.execute("UPDATE snapshots SET name=? WHERE name=?", (new, old))
    db.execute("UPDATE meta SET key=replace(key, ?, ?) WHERE key LIKE 'intents%'",
               (f"\x1f{old}\x1f", f"\x1f{new}\x1f"))
    db.execute("COMMIT")
    db.close()


def test_names_an_earlier_snaptree_stored_as_typed_are_found(capsys, tmp_path, disks):
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group(NFC, [f"raw:{p}" for p in disks])
        api.create(NFC, NFC)
    _respell(state, NFC, NFD)
    with Snaptree(state) as api:
        assert [g.name for g in api.list_groups()] == [NFD]  # as it was stored
        for group in (NFC, NFD):
            assert [s.name for s in api.list(group)] == [NFD]
            assert api.info(group, NFC).name == NFD and api.current(group).name == NFD
        with pytest.raises(Conflict):
            api.create(NFC, NFC)  # the same name, however it was stored
        with pytest.raises(Conflict):
            api.create_group(NFC, [f"raw:{_third_disk(tmp_path)}"])
        snap = api.create(NFC, "later")
        assert snap.parent == NFD
        api.revert(NFC, NFC)
        assert api.check(NFC).clean and api.check(NFD).clean
        assert [e["group_name"] for e in api.journal(NFC)][0] == NFD
    with group_lock(state, NFD):  # one lock for both spellings
        with Snaptree(state, lock_timeout=0) as api, pytest.raises(Busy):
            api.create(NFC)
    code, out, _ = st(capsys, state, "list", NFC)
    assert code == 0 and NFD in out


def _third_disk(tmp_path):
    path = tmp_path / "third.img"
    path.write_bytes(b"C" * 65536)
    return path


@pytest.mark.parametrize("blank", ["\u3164", "\u115f", "\u1160", "\uffa0", "\u2800", "\u180e",
                                   "\u034f", "\ufe0f", "\u200b", "\U000e0020"])
def test_characters_that_draw_nothing_are_refused(capsys, tmp_path, disks, blank):
    with pytest.raises(InvalidInput):
        check_name(f"a{blank}b")
    with pytest.raises(InvalidInput):
        check_name(blank)
    state = tmp_path / "state"
    st(capsys, state, "group", "create", "vm", f"raw:{disks[0]}")
    code, _, err = st(capsys, state, "create", "vm", f"snap{blank}")
    assert code == InvalidInput.exit_code and err.count("\n") == 1
    assert f"U+{ord(blank):04X}" in err
    code, _, _ = st(capsys, state, "group", "create", f"g{blank}", f"raw:{disks[1]}")
    assert code == InvalidInput.exit_code


@pytest.mark.parametrize("name", ["caf\u00e9", "名字", "\U0001f600", "a b", "Ελλάδα", "\uac00"])
def test_visible_names_stay_accepted(name):
    assert check_name(name) == name
