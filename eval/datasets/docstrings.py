"""Docstrings cut out of Python source, one way for every dataset that must not give its answers away.

A code retrieval query made from a docstring is too easy when the document still holds that docstring, so three
builders remove it: ``codebase.strip_docstrings`` (every docstring of a tree of files), CodeSearchNet
(``codesearchnet.strip_python_docstring``: the docstring of one function given as a code string) and the offline
set (``offline_code``: a function's lines from its parsed file). They share the core here: which statement is a
docstring (``docstring_statement``), where it lies in the text in characters (``locate``: ast counts columns in
UTF-8 bytes), and the two ways to remove it: whole lines (``without_lines``) or the exact span (``cut``).

What each keeps differs, and is kept: a file keeps a docstring that shares its first line with code, and a body left
empty gets ``pass`` (the file must still compile); a CodeSearchNet function has the span cut even beside code on its
line, and code that does not parse (Python 2) has its first triple-quoted literal cut when it holds the docstring's
start; an offline-set function is left out (None) when its docstring shares a line with code other than a comment.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
TRIPLE_QUOTED = re.compile(r"""[rRuUbBfF]{0,2}(\"\"\"|''')(.*?)\1""", re.S)


@dataclass(frozen=True)
class Docstring:
    """Where a docstring lies: 0-based lines, columns in characters of those lines (end exclusive)."""

    first_line: int
    first_column: int
    last_line: int
    last_column: int
    before: str  # the text of its first line before it
    after: str  # the text of its last line after it

    @property
    def has_code_before(self) -> bool:
        return bool(self.before.strip())

    @property
    def alone(self) -> bool:
        """Nothing but blanks shares its lines, or a comment after it: removing its lines removes no code."""
        after = self.after.strip()
        return not self.has_code_before and (not after or after.startswith("#"))


def docstring_statement(node: ast.AST) -> ast.Expr | None:
    """The docstring of a module, class or function: the first statement of its body when it is a string literal
    (what ``ast.get_docstring`` reads)."""
    body = getattr(node, "body", None)
    if not isinstance(node, DOCUMENTED) or not body:
        return None
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def locate(node: ast.AST, lines: list[str]) -> Docstring | None:
    """The docstring of ``node`` in ``lines`` (the lines its tree was parsed from), or None when it has none."""
    statement = docstring_statement(node)
    if statement is None or statement.end_lineno is None or statement.end_col_offset is None:
        return None
    first, last = statement.lineno - 1, statement.end_lineno - 1
    first_column = _column(lines[first], statement.col_offset)
    last_column = _column(lines[last], statement.end_col_offset)
    return Docstring(first, first_column, last, last_column, lines[first][:first_column], lines[last][last_column:])


def without_lines(lines: list[str], docstring: Docstring, replacement: list[str] | None = None) -> list[str]:
    """``lines`` with the docstring's lines, from its first to its last, replaced (removed by default)."""
    return lines[:docstring.first_line] + (replacement or []) + lines[docstring.last_line + 1:]


def cut(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    """The lines with the text from ``start`` to ``end`` (line, column) removed: whole lines when nothing else
    shares them, else just the span (and a ``;`` that followed it)."""
    (first, begin), (last, stop) = start, end
    before, after = lines[first][:begin], lines[last][stop:]
    if not before.strip() and not after.strip():
        return "\n".join(lines[:first] + lines[last + 1:])
    after = re.sub(r"^\s*;\s*", "", after) if before.strip() else after
    joined = before.rstrip() + (" " if before.strip() and after.strip() else "") + after.lstrip()
    return "\n".join(lines[:first] + ([joined] if joined.strip() else []) + lines[last + 1:])


# ----- the three uses
def strip_file(source: str) -> tuple[str, int]:
    """A module's source without the docstrings of the module and of every class and function in it, and how many
    were removed. A docstring that shares its first line with code stays; a body it leaves empty gets ``pass``.
    Raises SyntaxError (or ValueError) when the source does not parse."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    found = [(node, docstring) for node in ast.walk(tree) if (docstring := locate(node, lines)) is not None]
    cuts = [(docstring, None if len(node.body) > 1 else [" " * node.body[0].col_offset + "pass\n"])
            for node, docstring in found if not docstring.has_code_before]
    for docstring, replacement in sorted(cuts, key=lambda c: c[0].first_line, reverse=True):
        lines = without_lines(lines, docstring, replacement)
    return "".join(lines), len(cuts)


def strip_function_source(code: str, docstring: str = "") -> str:
    """``code`` (one function or class, possibly indented) without its docstring (the first statement of the body,
    when a string).

    The code is parsed (dedented) with ``ast``; when it does not parse (Python 2, say), the first triple-quoted
    literal is cut instead, provided it holds the start of ``docstring``. Lines left blank by the cut go too."""
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    lines = code.split("\n")
    dedented = textwrap.dedent(code).split("\n")
    try:
        tree = ast.parse("\n".join(dedented))
    except (SyntaxError, ValueError):
        return _cut_triple_quoted(code, docstring)
    function = next((node for node in tree.body
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))), None)
    if function is None:
        return _cut_triple_quoted(code, docstring)
    found = locate(function, dedented)
    if found is None:
        return code  # no docstring in the code

    def margin(line: int) -> int:  # the indentation dedent removed from this line
        return len(lines[line]) - len(dedented[line])

    return cut(lines, (found.first_line, margin(found.first_line) + found.first_column),
               (found.last_line, margin(found.last_line) + found.last_column))


def function_lines_without_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str | None:
    """The function's source lines (decorators included) without its docstring's lines, dedented by the def's own
    indentation (lines indented less, inside multi-line strings, stay as they are). None when it has no docstring,
    or when the docstring shares a line with code, which line removal would cut."""
    docstring = locate(node, lines)
    if docstring is None or not docstring.alone:
        return None
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    kept = lines[first - 1:docstring.first_line] + lines[docstring.last_line + 1:node.end_lineno]
    indent = lines[node.lineno - 1][:node.col_offset]
    return "\n".join(line[len(indent):] if line.startswith(indent) else line.rstrip() for line in kept)


def _cut_triple_quoted(code: str, docstring: str) -> str:
    """The fallback for code that does not parse: the first triple-quoted literal cut, when it holds the start of
    ``docstring`` (unchanged code otherwise)."""
    match = TRIPLE_QUOTED.search(code)
    if match is None:
        return code
    expected = " ".join(docstring.split())[:40]
    if expected and expected not in " ".join(match.group(2).split()):
        return code  # the literal is not the docstring
    lines = code.split("\n")
    start_line = code.count("\n", 0, match.start())
    end_line = code.count("\n", 0, match.end())
    start_col = match.start() - (code.rfind("\n", 0, match.start()) + 1)
    end_col = match.end() - (code.rfind("\n", 0, match.end()) + 1)
    return cut(lines, (start_line, start_col), (end_line, end_col))


def _column(line: str, byte_offset: int) -> int:
    """ast's column (a UTF-8 byte offset into the line) as a character index."""
    return len(line.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))
