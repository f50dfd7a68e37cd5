"""Crash safety: SIGKILL at every step boundary, for each backend that runs here."""

from __future__ import annotations

import os
import shutil

import pytest

from crash_harness import walk_kill_points
from test_raw import raw_factory

pytestmark = pytest.mark.crash


def _raw_volumes(base: str):
    factory = raw_factory(base)
    return [factory(), factory()]


@pytest.mark.parametrize("operation", ["create", "revert", "delete"])
def test_raw_survives_every_kill_point(operation, tmp_path, crash_totals):
    stats = walk_kill_points("raw", operation, str(tmp_path), _raw_volumes,
                             cleanup=lambda d: shutil.rmtree(d, ignore_errors=True))
    crash_totals.append(stats)
    assert stats.tried >= 6
    assert stats.failures == [], "\n".join(stats.failures)
    assert stats.survived == stats.tried
