"""Property-based bad input: names, group names, volume specs, options, CLI argv.

Never a traceback, never a command run with unchecked input, never a file
touched outside the volume's own places.  Case counts are bounded so CI
stays quick, and reported at the end of the run.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from snaptree import Snaptree
from snaptree.cli import main
from snaptree.errors import InvalidInput, SnaptreeError
from snaptree.names import MAX_NAME_LENGTH, check_name

NASTY = st.sampled_from([
    "..", "../../etc/passwd", "-rf", "--help", "$(reboot)", "`id`", "; rm -rf /", "a|b", "a&b",
    "*", "?", "~root", "x" * 65, "x" * 64, "\u202eevil", "é", "名字", "a\u0000b", "\t", " x",
    "x ", ".", "-", "a/b", "a\\b", "\n", "\x7f", "😀", "\ud800", "name with space",
])
TEXT = st.one_of(NASTY, st.text(min_size=0, max_size=90),
                 st.text(alphabet=st.characters(codec="utf-8"), max_size=20))
SETTINGS = settings(max_examples=int(os.environ.get("SNAPTREE_FUZZ_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    disk = base / "d.img"
    disk.write_bytes(b"z" * 8192)
    api = Snaptree(str(base / "state"))
    api.create_group("vm", [f"raw:{disk}"])
    yield api, base, disk
    api.close()


def _tree(base):
    out = set()
    for root, dirs, files in os.walk(base):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(root, name), base))
    return out


@SETTINGS
@given(name=TEXT)
def test_snapshot_names(world, fuzz_counter, name):
    fuzz_counter["snapshot names"] = fuzz_counter.get("snapshot names", 0) + 1
    api, base, disk = world
    api.create("vm", "warm-up") if not api.list("vm") else None
    api.delete("vm", "warm-up")  # locks and audit log exist from here on
    before_files = _tree(base)
    try:
        stored = check_name(name)  # the name's normal form (NFC)
    except InvalidInput:
        stored = None
    try:
        snap = api.create("vm", name)
    except InvalidInput:
        assert stored is None
        assert _tree(base) == before_files, "nothing made for a refused name"
        return
    except SnaptreeError as err:  # a duplicate of an earlier valid example
        assert "already has a snapshot" in str(err)
        return
    assert stored is not None and snap.name == stored and 1 <= len(stored) <= MAX_NAME_LENGTH
    assert api.info("vm", name).snapshot_id == snap.snapshot_id  # found by the name as given
    # the member lives in the volume's own place, whatever the name
    (member,) = snap.members
    assert os.path.dirname(member.ref) == str(disk.parent / ".d.img.snaptree")
    assert _tree(base) - before_files <= {f".d.img.snaptree/{snap.snapshot_id}.img", ".d.img.snaptree"}
    api.delete("vm", name)


@SETTINGS
@given(name=TEXT)
def test_group_names(world, fuzz_counter, name):
    fuzz_counter["group names"] = fuzz_counter.get("group names", 0) + 1
    api, base, disk = world
    try:
        api.create_group(name, [f"raw:{disk}"])
    except InvalidInput:
        return
    except SnaptreeError as err:
        assert "already belongs" in str(err) or "already exists" in str(err)
        return
    raise AssertionError("the disk already belongs to 'vm'; no group may take it")


SPEC = st.one_of(
    TEXT,
    st.builds(lambda b, l: f"{b}:{l}", st.sampled_from(["raw", "qcow2", "btrfs", "lvm", "nosuch", "", "r aw"]),
              TEXT),
    st.builds(lambda l: f"raw:/{l}", TEXT),
)


@SETTINGS
@given(spec=SPEC)
def test_volume_specs_never_run_a_command(world, fuzz_counter, spec, monkeypatch):
    fuzz_counter["volume specs"] = fuzz_counter.get("volume specs", 0) + 1
    api, base, disk = world
    spawned = []
    real_popen_init = subprocess.Popen.__init__

    def watching(self, args, *a, **k):
        spawned.append(args)
        return real_popen_init(self, args, *a, **k)

    monkeypatch.setattr(subprocess.Popen, "__init__", watching)
    try:
        try:
            api.claim(spec)
        except SnaptreeError:
            pass
    finally:
        monkeypatch.undo()
    for argv in spawned:
        # a backend may inspect a path that exists; never with text it did not check
        assert isinstance(argv, (list, tuple)), f"shell string spawned: {argv!r}"
        assert all("\x00" not in str(a) for a in argv)


@SETTINGS
@given(args=st.lists(TEXT, min_size=0, max_size=5), command=st.sampled_from(
    ["create", "revert", "delete", "info", "parent", "list", "current", "group", "check", "map"]))
def test_cli_never_tracebacks(world, fuzz_counter, capsys, args, command):
    fuzz_counter["cli argv"] = fuzz_counter.get("cli argv", 0) + 1
    api, base, disk = world
    for a in args:
        if "\x00" in a:
            return  # argv cannot carry NUL
        try:
            os.fsencode(a)
        except UnicodeEncodeError:
            return  # not something a real argv can hold
    try:
        code = main(["--state-dir", api.state_dir, "--wait", "5", command, *args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    assert isinstance(code, int)
    if code not in (0, 11):
        assert err.strip(), "a failure says why"
    # clean up anything a valid create made, to keep the world small
    for snap in api.list("vm"):
        api.delete("vm", snap.name)


@SETTINGS
@given(pairs=st.lists(TEXT, max_size=4))
def test_group_options(world, fuzz_counter, pairs, tmp_path_factory):
    fuzz_counter["group options"] = fuzz_counter.get("group options", 0) + 1
    from snaptree.cli import _options
    try:
        options = _options(pairs)
    except InvalidInput:
        return
    assert all(isinstance(k, str) and k for k in options)
