"""tools/wrap_long_lines.py: long strings, docstrings and comments wrapped, the program unchanged."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "wrap_long_lines", Path(__file__).parents[1] / "tools" / "wrap_long_lines.py"
)
wrap = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(wrap)

WORDS = " ".join(f"word{i}" for i in range(30))
SOURCE = f'''
def check(found, expected):
    """{WORDS} {WORDS}"""
    message = "{WORDS} {WORDS}"
    if found != expected:  # {WORDS}
        raise ValueError(f"expected {{expected}} values on the grid, {WORDS} found {{found!r}}; {WORDS}")
    # {WORDS} {WORDS}
    return ["{WORDS} {WORDS}", "short"], {{"key": "{WORDS}"}}, message
'''


def _ruff_format(path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--quiet", "--isolated", "--line-length", "80", str(path)],
        check=True,
    )


def test_every_long_line_is_wrapped_and_the_program_is_unchanged(tmp_path):
    """As ``make format`` runs it: the formatter, the wrapping, the formatter again."""
    path = tmp_path / "sample.py"
    path.write_text(SOURCE)
    _ruff_format(path)
    assert wrap.wrap_file(path, 80)
    _ruff_format(path)
    text = path.read_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert wrap._meaning(text) == wrap._meaning(SOURCE)
    namespace: dict = {}
    exec(compile(text, "sample", "exec"), namespace)
    with pytest.raises(ValueError, match=f"expected 3 values on the grid, {WORDS} found 2; {WORDS}$"):
        namespace["check"](2, 3)
    assert namespace["check"](1, 1) == ([f"{WORDS} {WORDS}", "short"], {"key": WORDS}, f"{WORDS} {WORDS}")
    assert not wrap.wrap_file(path, 80)  # nothing left to wrap


def test_a_rewrite_that_would_change_the_program_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "sample.py"
    path.write_text(SOURCE)
    monkeypatch.setattr(wrap, "wrap_prose", lambda source, limit: source.replace("short", "long"))
    with pytest.raises(RuntimeError, match="would change the program"):
        wrap.wrap_file(path, 80)
    assert path.read_text() == SOURCE
