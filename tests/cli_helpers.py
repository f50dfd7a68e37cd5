"""Run the ``snaptree`` command in-process, as the CLI tests do."""

from __future__ import annotations

from snaptree.cli import main

__all__ = ["st"]


def st(capsys, state, *args):
    """Run ``snaptree --state-dir STATE ARGS...``; returns (exit code, stdout, stderr)."""
    code = main(["--state-dir", str(state), *args])
    out, err = capsys.readouterr()
    return code, out, err
