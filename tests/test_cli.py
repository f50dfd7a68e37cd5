"""The command line: exit codes, one-line errors, --json, nothing changed on bad input."""

from __future__ import annotations

import json
import os

import pytest

from cli_helpers import st
from snaptree.cli import main
from snaptree.testing import run_cli


@pytest.fixture
def env(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(b"1" * 8192)
    return tmp_path / "state", disk


def test_lifecycle_and_json(capsys, env):
    state, disk = env
    assert st(capsys, state, "group", "create", "vm", f"raw:{disk}")[0] == 0
    assert st(capsys, state, "create", "vm", "a", "-d", "first")[0] == 0
    disk.write_bytes(b"2" * 8192)
    assert st(capsys, state, "create", "vm", "b")[0] == 0
    code, out, _ = st(capsys, state, "list", "vm", "--json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["a", "b"] and rows[1]["current"] is True
    code, out, _ = st(capsys, state, "--json", "list", "vm", "--tree")
    assert json.loads(out)[0]["children"][0]["name"] == "b"
    code, out, _ = st(capsys, state, "list", "vm", "--tree")
    assert "└── a" in out and "b *" in out
    assert st(capsys, state, "revert", "vm", "a")[0] == 0
    assert disk.read_bytes() == b"1" * 8192
    code, out, _ = st(capsys, state, "current", "vm", "--json")
    assert json.loads(out)["name"] == "a"
    code, out, _ = st(capsys, state, "parent", "vm", "b")
    assert out.strip() == "a"
    code, out, _ = st(capsys, state, "info", "vm", "a", "--json")
    info = json.loads(out)
    assert info["description"] == "first" and info["members"][0]["space"]["referenced_bytes"] > 0
    code, out, _ = st(capsys, state, "backends", "--json")
    assert "raw" in {b["name"] for b in json.loads(out)}
    code, out, _ = st(capsys, state, "group", "show", "vm", "--json")
    assert json.loads(out)["snapshots"] == 2
    code, out, _ = st(capsys, state, "check", "vm", "--json")
    assert code == 0 and json.loads(out)["clean"] is True
    code, out, _ = st(capsys, state, "journal", "vm", "--json")
    assert {e["operation"] for e in json.loads(out)} == {"create", "revert"}
    code, out, _ = st(capsys, state, "delete", "vm", "a", "--json")
    assert json.loads(out) == {"deleted": ["a"]}
    code, out, _ = st(capsys, state, "recover", "--json")
    assert code == 0 and json.loads(out)["errors"] == []


@pytest.mark.parametrize("args, code, text", [
    (["create", "vm", "--", "-bad"], 2, "must not start with '-'"),
    (["create", "vm", "a/b"], 2, "must not contain '/'"),
    (["create", "nosuch", "x"], 3, "no group named 'nosuch'"),
    (["revert", "vm", "nosuch"], 3, "no snapshot named 'nosuch'"),
    (["delete", "vm", "nosuch"], 3, "no snapshot named 'nosuch'"),
    (["info", "vm", "nosuch"], 3, "no snapshot named"),
    (["group", "create", "g2", "nosuch:/x"], 3, "unknown backend 'nosuch'"),
    (["group", "create", "g2", "raw:/does/not/exist.img"], 3, "does not exist"),
    (["group", "create", "g2", "raw:relative.img"], 2, "must be absolute"),
    (["group", "create", "g2", "no-colon"], 2, "BACKEND:LOCATOR"),
    (["create", "vm", "snap", "-o", "novalue"], 2, "KEY=VALUE"),
    (["create", "vm", "m", "--memory"], 2, "QMP socket"),
    (["create", "vm", "x\u200by"], 2, "invisible formatting character (U+200B)"),
    (["create", "vm", "\u202eabc"], 2, "invisible formatting character (U+202E)"),
    (["journal", "nosuch"], 3, "no group named 'nosuch'"),
])
def test_bad_input_one_line_and_nothing_changed(capsys, env, args, code, text):
    state, disk = env
    st(capsys, state, "group", "create", "vm", f"raw:{disk}")
    before = sorted(os.listdir(disk.parent))
    got, out, err = st(capsys, state, *args)
    assert got == code
    assert err.count("\n") == 1 and err.startswith("snaptree: error: ") and text in err
    assert "Traceback" not in err
    assert sorted(os.listdir(disk.parent)) == before
    assert json.loads(st(capsys, state, "list", "vm", "--json")[1]) == []


def test_duplicate_and_conflict_exit_code(capsys, env):
    state, disk = env
    st(capsys, state, "group", "create", "vm", f"raw:{disk}")
    st(capsys, state, "create", "vm", "a")
    code, _, err = st(capsys, state, "create", "vm", "a")
    assert code == 4 and "already has a snapshot named 'a'" in err
    code, _, err = st(capsys, state, "group", "create", "other", f"raw:{disk}")
    assert code == 4 and "already belongs to group 'vm'" in err


def test_check_reports_drift_with_its_own_exit_code(capsys, env):
    state, disk = env
    st(capsys, state, "group", "create", "vm", f"raw:{disk}")
    st(capsys, state, "create", "vm", "a")
    store = disk.parent / f".{disk.name}.snaptree"
    (member,) = list(store.iterdir())
    member.unlink()
    (store / "0123456789abcdef.img").write_bytes(b"stray")
    code, out, _ = st(capsys, state, "check", "vm", "--json")
    report = json.loads(out)
    assert code == 11
    assert report["missing"][0]["snapshot"] == "a"
    assert report["orphans"][0]["snapshot_id"] == "0123456789abcdef"


def test_argparse_errors_are_exit_2(capsys, env):
    state, _ = env
    with pytest.raises(SystemExit) as exc:
        main(["--state-dir", str(state), "create"])
    assert exc.value.code == 2


def test_module_entry_point_runs(env):
    state, disk = env
    result = run_cli(["group", "create", "vm", f"raw:{disk}"], str(state))
    assert result.returncode == 0, result.stderr
    result = run_cli(["--json", "group", "list"], str(state))
    assert json.loads(result.stdout)[0]["name"] == "vm"


@pytest.mark.parametrize("args", [["--wait", "nan", "list", "vm"], ["--wait", "-1", "list", "vm"],
                                  ["--wait", "inf", "list", "vm"], ["journal", "--limit", "-1"],
                                  ["journal", "--limit", "0"],
                                  ["journal", "--limit", "99999999999999999999"],
                                  ["journal", "--limit", "1000001"],
                                  ["journal", "--limit", "\u0663"],  # an Arabic-Indic three
                                  ["journal", "--limit", "1_0"],
                                  ["prune", "vm", "--keep", "99999999999999999999"],
                                  ["prune", "vm", "--keep", "9" * 5000]])
def test_numbers_out_of_range_are_exit_2(capsys, env, args):
    state, _ = env
    with pytest.raises(SystemExit) as exc:
        main(["--state-dir", str(state), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "is not a" in err and err.count("\n") == 1 and err.startswith("snaptree: error: ")


def test_the_biggest_counts_are_taken(capsys, env):
    state, disk = env
    st(capsys, state, "group", "create", "vm", f"raw:{disk}")
    st(capsys, state, "create", "vm", "a")
    code, out, _ = st(capsys, state, "journal", "--limit", "1000000", "--json")
    assert code == 0 and len(json.loads(out)) == 1
    assert st(capsys, state, "prune", "vm", "--keep", "1000000")[:2] == (0, "nothing to delete\n")


def test_the_api_journal_takes_any_limit(env):
    state, disk = env
    from snaptree import Snaptree
    with Snaptree(str(state)) as api:
        api.create_group("vm", [f"raw:{disk}"])
        assert len(api.journal(limit=10**30)) == 0 and len(api.journal("vm", 10**30)) == 0


@pytest.mark.parametrize("args", [[], ["create"], ["group"], ["group", "bogus"], ["revert", "vm"],
                                  ["list", "vm", "--bogus"], ["create", "vm", "--mode", "foo"],
                                  ["--wait"], ["journal", "--limit"]])
def test_command_line_errors_are_one_line(capsys, env, args):
    state, _ = env
    with pytest.raises(SystemExit) as exc:
        main(["--state-dir", str(state), *args])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("snaptree: error: ") and "usage:" not in err
    assert err.rstrip().endswith("--help')")


def test_an_empty_state_dir_is_refused_not_replaced_by_the_default(capsys, env, monkeypatch):
    state, disk = env
    monkeypatch.setenv("SNAPTREE_STATE_DIR", str(state))
    st(capsys, state, "group", "create", "vm", f"raw:{disk}")
    code, out, err = st(capsys, "", "group", "list")
    assert code == 2 and out == "" and err.startswith("snaptree: error: ")


def test_the_state_dir_cannot_be_a_volume(capsys, env, tmp_path):
    state, disk = env
    st(capsys, state, "group", "create", "vm", f"raw:{disk}")
    st(capsys, state, "create", "vm", "a")  # writes the audit log too
    link = tmp_path / "catalog-link"
    os.link(state / "catalog.sqlite", link)
    for volume in (state / "catalog.sqlite", link, state / "audit.jsonl"):
        code, _, err = st(capsys, state, "group", "create", "self", f"raw:{volume}")
        assert code == 2 and "holds snaptree's own state" in err
    code, out, _ = st(capsys, state, "--json", "group", "list")
    assert [g["name"] for g in json.loads(out)] == ["vm"]


def test_a_reader_that_goes_away_ends_quietly(env):
    import subprocess
    import sys
    state, disk = env
    from snaptree import Snaptree
    with Snaptree(str(state)) as api:
        api.create_group("vm", [f"raw:{disk}"])
        for i in range(250):  # more JSON than a pipe holds
            api.create("vm", f"s{i}")
    argv = [sys.executable, "-m", "snaptree", "--state-dir", str(state), "--json", "list", "vm"]
    child_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env) as proc:
        proc.stdout.read(10)
        proc.stdout.close()  # as `| head -c 10` does
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert "internal error" not in err and "Traceback" not in err and "Exception" not in err
    assert code in (0, 141)


def test_every_command_shows_a_snapshot_with_the_same_keys(capsys, env):
    state, disk = env
    st(capsys, state, "group", "create", "vm", f"raw:{disk}")
    shown = {"create": json.loads(st(capsys, state, "--json", "create", "vm", "a")[1])}
    st(capsys, state, "create", "vm", "b")
    for args in (["revert", "vm", "a"], ["current", "vm"], ["parent", "vm", "b"],
                 ["info", "vm", "b"]):
        code, out, _ = st(capsys, state, "--json", *args)
        assert code == 0
        shown[args[0]] = json.loads(out)
    shown["list"] = json.loads(st(capsys, state, "--json", "list", "vm")[1])[1]
    keys = {name: set(data) - {"space"} for name, data in shown.items()}
    for each in (d["members"][0] for d in shown.values()):
        each.pop("space", None)
    assert len({frozenset(k) for k in keys.values()}) == 1, keys
    assert {name: data["current"] for name, data in shown.items()} == {
        "create": True, "revert": True, "current": True, "parent": True, "info": False,
        "list": False}


def test_recover_errors_go_to_stderr_alone(capsys, env, tmp_path):
    """A recover that fails says so on stderr, without 'nothing to recover'."""
    import sqlite3
    state, disk = env
    assert st(capsys, state, "group", "create", "vm", f"raw:{disk}")[0] == 0
    with sqlite3.connect(state / "catalog.sqlite") as db:  # a backend no plugin implements
        db.execute("UPDATE volumes SET backend='gone'")
    code, out, err = st(capsys, state, "recover", "vm")
    assert code == 8 and out == ""
    assert err.startswith("snaptree: error: vm: ") and "'gone'" in err and err.count("\n") == 1
    code, out, err = st(capsys, state, "recover", "vm", "--json")
    assert code == 8 and json.loads(out)["errors"]
