"""Wrap the over-long lines ``ruff format`` leaves: string literals, docstring prose and comments.

``ruff format`` never splits a string or a comment, so a long error message stays longer than the
line limit. This tool, run by ``make format`` after the formatter, rewrites only those lines:

* a one-line string literal inside brackets, or the whole right-hand side of an assignment, is
  split at spaces into an implicit concatenation (parenthesised where it is an element of a list,
  tuple, set or dict, or assigned), never inside an f-string's ``{}``; an f-string piece without a
  field loses its ``f``;
* a docstring line at the docstring's own indentation is re-wrapped at spaces (deeper lines, such
  as maths or code blocks, are left alone);
* a comment is re-wrapped; a trailing comment moves above its line.

Each file is written only when its syntax tree is unchanged (docstrings compared word by word), so
the program means the same before and after. Lines it cannot shorten are left for a person.

Usage: ``python tools/wrap_long_lines.py [--line-length N] FILE...``; prints the files changed.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import textwrap
import tokenize
from pathlib import Path

#: Room a split string's pieces leave on the line for the indentation the formatter gives them.
INDENT_ROOM = 26
_SKIPPED = (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)
_KEYWORDS_BEFORE_BRACKET = {"in", "and", "or", "not", "return", "yield", "else", "if", "for", "assert", "lambda",
                            "is", "await", "from", "with", "elif", "while"}


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(source).readline))


def _split_points(body: str, first: int, rest: int, is_f: bool) -> list[str]:
    """``body`` cut after spaces into pieces of at most ``first``, then ``rest`` characters."""
    pieces, start, width = [], 0, first
    while len(body) - start > width:
        depth, cut = 0, -1
        for i in range(start, min(len(body), start + width)):
            char = body[i]
            if is_f and char == "{":
                depth += 1
            elif is_f and char == "}":
                depth -= 1
            elif char == " " and depth == 0 and i > start + 10 and body[i - 1] != "\\":
                cut = i + 1
        if cut == -1:
            break
        pieces.append(body[start:cut])
        start, width = cut, rest
    pieces.append(body[start:])
    return pieces


def _long_strings(source: str, limit: int) -> list[tuple[int, int, int, bool]]:
    """``(row, start column, end column, to parenthesise)`` of the one-line strings on long lines that can be split."""
    lines = source.split("\n")
    brackets: list[bool] = []  # per open bracket: whether it opens a collection rather than a call/subscript
    found, previous = [], None
    adjacent: set[tuple[int, int]] = set()
    tokens = _tokens(source)
    for index, token in enumerate(tokens):
        if token.type == tokenize.OP and token.string in "([{":
            after_value = previous is not None and (
                (previous.type == tokenize.NAME and previous.string not in _KEYWORDS_BEFORE_BRACKET)
                or (previous.type == tokenize.OP and previous.string in ")]")
                or previous.type == tokenize.STRING)
            brackets.append(token.string == "{" or not after_value)
        elif token.type == tokenize.OP and token.string in ")]}":
            brackets.pop()
        elif token.type == tokenize.STRING and token.start[0] == token.end[0]:
            # outside brackets only the whole right-hand side of an assignment, which gets parentheses
            assigned = (not brackets and previous is not None and previous.string == "="
                        and tokens[index + 1].type in (tokenize.NEWLINE, tokenize.COMMENT))
            if len(lines[token.start[0] - 1]) > limit and (brackets or assigned):
                found.append((token.start[0], token.start[1], token.end[1], assigned or brackets[-1]))
            if previous is not None and previous.type == tokenize.STRING:
                adjacent.update({previous.start, token.start})
        if token.type not in _SKIPPED:
            previous = token
    # a piece of an existing concatenation is split in place: parentheses inside it would break it
    return [(row, c0, c1, collection and (row, c0) not in adjacent) for row, c0, c1, collection in found]


def wrap_strings(source: str, limit: int) -> str:
    """Split the long one-line string literals of ``source`` (see the module docstring)."""
    lines = source.split("\n")
    max_piece = limit - INDENT_ROOM
    for row, c0, c1, collection in sorted(_long_strings(source, limit), reverse=True):
        line = lines[row - 1]
        match = re.match(r"^([rRbBfFuU]{0,2})('|\")", line[c0:c1])
        if match is None or line[c0 + len(match.group(1)):].startswith(("'''", '"""')):
            continue
        prefix, quote = match.groups()
        body = line[c0 + len(prefix) + 1 : c1 - 1]
        is_f = "f" in prefix.lower()
        overhead = len(prefix) + 2 + (1 if collection else 0)
        first = min(limit - c0 - overhead, max_piece)
        rest = min(limit - c0 - overhead - len(line[c1:].rstrip()), max_piece)
        if min(first, rest) < 20:
            first = rest = max_piece - 10
        pieces = _split_points(body, first, rest, is_f)
        if len(pieces) == 1:
            continue
        plain = prefix.replace("f", "").replace("F", "")
        literals = [f"{prefix if is_f and ('{' in p or '}' in p) else plain}{quote}{p}{quote}" for p in pieces]
        indent = " " * (c0 + (1 if collection else 0))
        joined = ("\n" + indent).join(literals)
        lines[row - 1] = line[:c0] + (f"({joined})" if collection else joined) + line[c1:]
    return "\n".join(lines)


def wrap_prose(source: str, limit: int) -> str:
    """Re-wrap the long docstring lines and comments of ``source`` (see the module docstring)."""
    lines = source.split("\n")
    replaced: dict[int, list[str]] = {}
    for token in _tokens(source):
        if token.type == tokenize.STRING and re.match(r"^[rRuU]?('''|\"\"\")", token.string):
            base = token.start[1]
            for row in range(token.start[0], token.end[0] + 1):
                line = lines[row - 1]
                if len(line) <= limit or len(line) - len(line.lstrip()) != base:
                    continue  # short, or a deeper block (maths, code), or the string starts after code
                wrapped = textwrap.wrap(line.strip(), width=limit - base, break_long_words=False,
                                        break_on_hyphens=False)
                if len(wrapped) > 1:
                    replaced[row] = [" " * base + text for text in wrapped]
        elif token.type == tokenize.COMMENT and len(lines[token.start[0] - 1]) > limit:
            row, col = token.start
            line = lines[row - 1]
            marker = "#: " if token.string.startswith("#:") else "# "
            text = token.string[len(marker.rstrip()):].strip()
            if set(text) <= set("-= "):
                continue
            code = line[:col].rstrip()
            indent = len(line) - len(line.lstrip()) if code else col
            room = 4 if code else 0  # the formatter may indent a comment moved above a closing bracket once more
            wrapped = textwrap.wrap(text, width=limit - indent - len(marker) - room, break_long_words=False)
            replaced[row] = [" " * indent + marker + part for part in wrapped] + ([code] if code else [])
    out: list[str] = []
    for row, line in enumerate(lines, 1):
        out.extend(replaced.get(row, [line]))
    return "\n".join(out)


def _meaning(source: str) -> str:
    """The syntax tree of ``source``, docstrings compared word by word."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                value.value = " ".join(value.value.split())
    return ast.dump(tree)


def wrap_file(path: Path, limit: int) -> bool:
    """Rewrite ``path`` with its long lines wrapped; returns whether it changed.

    Raises
    ------
    RuntimeError
        If the rewrite would change the program (a bug of this tool; the file is left as it was).
    """
    source = path.read_text()
    wrapped = wrap_prose(wrap_strings(source, limit), limit)
    if wrapped == source:
        return False
    if _meaning(wrapped) != _meaning(source):
        raise RuntimeError(f"{path}: wrapping would change the program; left as it was")
    path.write_text(wrapped)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--line-length", type=int, default=110)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        if wrap_file(path, args.line_length):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
