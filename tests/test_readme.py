"""The README's Python example runs as written; its first lines name the two commands."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_python_example_runs(tmp_path):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S).group(1)
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "['before-upgrade'] before-upgrade" in result.stdout
    assert "refused:" in result.stdout and "exit code 2" in result.stdout


def test_first_lines_give_demo_and_test_commands():
    head = README.read_text(encoding="utf-8").splitlines()[:6]
    assert any("./dev.sh demo" in line for line in head)
    assert any("./dev.sh test" in line for line in head)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "./dev.sh test" in ci


def test_exit_code_table_matches_the_error_tree():
    """Every exit status the code gives has its row, and recover's failure
    is listed where ``StateError`` puts it (the CLI tests check the status)."""
    from snaptree.cli import EXIT_DRIFT
    from snaptree.errors import EXIT_CODES, StateError
    text = README.read_text(encoding="utf-8")
    table = text.split("Exit codes:", 1)[1].split("\n\n", 2)[1]
    rows = dict(re.findall(r"^\| (\d+) \| (.*) \|$", table, re.M))
    assert {int(code) for code in rows} == {0, *EXIT_CODES.values(), EXIT_DRIFT, 141}
    assert "recover cannot finish" in rows[str(StateError.exit_code)]
