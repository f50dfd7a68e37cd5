"""LVM name and option rules: refused before any command runs (no device-mapper needed)."""

from __future__ import annotations

import pytest

from snaptree.errors import InvalidInput
from snaptree_lvm import LvmBackend
from snaptree_lvm.backend import check_snapshot_size
from snaptree_lvm.lvmcmd import LvmCommands
from snaptree_lvm.names import (
    generated_names,
    made_from,
    match_snapshot_lv,
    parse_locator,
    revert_old_name,
    snapshot_lv_name,
)

BAD_LOCATORS = [
    "vg",                      # no LV
    "vg/lv/extra",
    "/vg/lv",
    "vg/",
    "/lv",
    "bad vg/lv",               # space
    "vg/l$v",
    "vg/lv;rm",
    "vg/ünï",
    "-vg/lv",                  # leading hyphen
    "vg/-lv",
    "./lv",
    "vg/..",
    "vg/snapshot1",            # reserved prefixes
    "vg/pvmove0",
    "vg/data_tmeta",           # reserved infixes
    "vg/x_mlog",
    "vg/x_rimage_0",
    "vg/x_cpool",
    "vg/data_cvol",
    "vg/x_imeta",
    "vg/" + "l" * 120,         # too long once a snapshot suffix is added
    "rv/" + "b" * 93,          # the thin revert's temporary would be "rv/...": 128, too long
    "rv/" + "a-" * 31,         # fits only while device-mapper's doubled hyphens are ignored
    "vg/disk.snaptree.0123456789abcdef",      # what snaptree makes of vg/disk: its delete or
    "vg/disk.snaptree-new.0123456789abcdef",  # revert removes or replaces it, so it is no
    "vg/disk.snaptree-old.0123456789abcdef",  # volume of its own
]


@pytest.fixture
def backend():
    commands = LvmCommands(use_udev=False)
    return LvmBackend(commands)


@pytest.mark.parametrize("locator", BAD_LOCATORS)
def test_bad_locators_refused_before_any_command(backend, locator):
    with pytest.raises(InvalidInput) as caught:
        backend.claim(locator)
    assert caught.value.message.startswith("lvm: ")
    assert "\n" not in caught.value.message
    assert backend.commands.runner.calls == 0


@pytest.mark.parametrize("locator, expected", [
    ("vg0/disk", ("vg0", "disk")),
    ("/dev/vg0/disk-1", ("vg0", "disk-1")),
    ("v.g+_-/a.b+c_d-e", ("v.g+_-", "a.b+c_d-e")),
    ("vg/snap", ("vg", "snap")),       # only the 'snapshot' prefix is reserved
])
def test_good_locators(locator, expected):
    assert parse_locator(locator) == expected


def test_snapshot_names_round_trip():
    name = snapshot_lv_name("disk", "0123456789abcdef")
    assert name == "disk.snaptree.0123456789abcdef"
    assert match_snapshot_lv("disk", name) == "0123456789abcdef"
    # another volume's snapshot, or a revert leftover, is not this volume's member
    assert match_snapshot_lv("dis", name) is None
    assert match_snapshot_lv("disk", revert_old_name("disk", "0123456789abcdef")) is None
    nested = snapshot_lv_name(name, "fedcba9876543210")
    assert match_snapshot_lv("disk", nested) is None
    with pytest.raises(InvalidInput):
        snapshot_lv_name("disk", "../../x")


def test_what_snaptree_makes_of_an_lv_is_known_by_its_name():
    some_id = "0123456789abcdef"
    assert made_from(snapshot_lv_name("disk", some_id)) == "disk"
    assert made_from(revert_old_name("disk.x", some_id)) == "disk.x"
    assert made_from("disk.snaptree") is None
    assert made_from("disk.snaptree.0123") is None
    assert made_from("disk") is None


def test_footprint_is_the_device_node(backend):
    from snaptree import Volume
    assert backend.snaptree_volume_footprint(backend="lvm", volume=Volume("lvm", "vg0/disk")) \
        == ["/dev/vg0/disk"]
    assert backend.snaptree_volume_footprint(backend="raw", volume=Volume("lvm", "vg0/disk")) is None
    assert backend.commands.runner.calls == 0, "a footprint runs no command"


@pytest.mark.parametrize("good", ["20%ORIGIN", "100%ORIGIN", "1%ORIGIN", "512M", "1.5g", "4096k"])
def test_snapshot_size_accepted(good):
    assert check_snapshot_size(good) == good


@pytest.mark.parametrize("bad", ["0%ORIGIN", "101%ORIGIN", "20%VG", "-5M", "0", "5 M", "", None,
                                 "1M; rm", "%ORIGIN"])
def test_snapshot_size_refused(bad):
    with pytest.raises(InvalidInput):
        check_snapshot_size(bad)


def test_udev_setting_shapes_every_command():
    without = LvmCommands(use_udev=False)
    assert without.config_args() == ["--config", "activation{udev_sync=0 udev_rules=0}"]
    assert without.runner.env["DM_DISABLE_UDEV"] == "1"
    with_udev = LvmCommands(use_udev=True)
    assert with_udev.config_args() == []
    assert "DM_DISABLE_UDEV" not in (with_udev.runner.env or {})


def test_capabilities_are_declared():
    info = LvmBackend.info
    assert info.name == "lvm"
    assert info.capabilities.needs_root
    assert info.capabilities.revert_to_any
    assert not info.capabilities.atomic_batch
    assert set(info.required_tools) == {"lvm", "kpartx"}


def _longest_accepted(vg: str, unit: str) -> str:
    name = ""
    while True:
        longer = (unit * 200)[: len(name) + 1]
        try:
            parse_locator(f"{vg}/{longer}")
        except InvalidInput:
            return name
        name = longer


@pytest.mark.parametrize("vg, unit", [("vg0", "d"), ("vg0", "d-"), ("vg-with-hyphens", "d-"),
                                      ("v" * 60, "d")])
def test_every_generated_name_of_the_longest_accepted_lv_fits_lvm(vg, unit):
    """LVM refuses an LV once len(vg) + len(lv) + 3 reaches 128, and device-mapper a
    name (hyphens doubled, plus -real, -cow or a partition suffix) of 128 or more;
    the longest LV name accepted leaves every derived name inside both."""
    lv = _longest_accepted(vg, unit)
    assert len(lv) > 10
    lv_names, dm_names = generated_names(vg, lv)
    assert any(".snaptree-new." in n for n in lv_names)
    assert all(len(vg) + len(n) + 3 < 128 for n in lv_names)
    assert all(len(n) < 128 for n in dm_names)
    assert any("--new." in n for n in dm_names), "device-mapper doubles the hyphens"
    with pytest.raises(InvalidInput) as caught:
        parse_locator(f"{vg}/{(unit * 200)[: len(lv) + 1]}")
    assert "too long" in caught.value.message and "\n" not in caught.value.message


def test_a_volume_already_in_a_group_is_not_refused_for_its_length():
    """Claiming checks the room snaptree's derived names need; operations on a
    volume an older, laxer check let into a group do not refuse it again."""
    lv = _longest_accepted("rv", "b") + "b"
    with pytest.raises(InvalidInput, match="too long"):
        parse_locator(f"rv/{lv}")
    assert parse_locator(f"rv/{lv}", room=False) == ("rv", lv)
    with pytest.raises(InvalidInput):
        parse_locator("rv/" + "b" * 200, room=False)  # past LVM's own limit: still refused
