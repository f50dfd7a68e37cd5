"""The progress bar draws on a terminal and stays silent otherwise."""

from __future__ import annotations

import io

from snaptree.progress import ProgressBar


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_bar_draws_on_a_tty_and_ends_with_newline():
    stream = FakeTTY()
    bar = ProgressBar(stream)
    bar(0, 100, "snapshot disk.img")
    bar(100, 100, "snapshot disk.img")
    bar.close()
    text = stream.getvalue()
    assert "100.0%" in text and "snapshot disk.img" in text and text.endswith("\n")


def test_bar_is_silent_off_a_tty():
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar(50, 100, "x")
    bar.close()
    assert stream.getvalue() == ""


def test_copy_reports_progress_through_the_api(tmp_path):
    from snaptree import Snaptree
    disk = tmp_path / "d.img"
    with open(disk, "wb") as f:
        f.write(b"q" * (20 * 1024 * 1024))
    seen = []
    with Snaptree(str(tmp_path / "state"), progress=lambda d, t=None, label="": seen.append((d, t, label))) as api:
        api.create_group("vm", [f"raw:{disk}"])
        api.create("vm", "s")
    copy_steps = [s for s in seen if s[2].startswith("snapshot d.img")]
    if copy_steps and copy_steps[0][1]:
        assert copy_steps[-1][0] == copy_steps[-1][1]
    assert seen[-1][:2] == (1, 1), "the coordinator reports members done"
