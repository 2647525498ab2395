"""Definitions and their documentation comments in brace languages (JavaScript/TypeScript, Rust, C), the
equivalent for comment-based docs of what ``docstrings.py`` is for Python: where each definition is (its name's line
and the line its body ends on), the documentation comment right above it (JSDoc ``/** */``, Rust ``///``, a C
``/* */`` or ``//`` block), and that comment's text.

No parser is used: definitions are recognised by line patterns (function, class, method, ``x.y = function``,
top-level ``const``/``var``; Rust items; C function definitions at column 0), and a definition's end by matching
brackets with strings, comments, character literals and JavaScript regex literals skipped. That is exact for the
plain, formatted code of the projects this is used on, and approximate elsewhere (an end line may be off; a
definition written in an unusual form is not seen).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LANGUAGE_OF_SUFFIX = {".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".ts": "typescript",
                      ".rs": "rust", ".c": "c", ".h": "c"}
KEYWORDS = frozenset(["if", "for", "while", "switch", "catch", "function", "return", "with", "do", "else", "new", "typeof", "sizeof", "defined", "case", "constructor", "super", "import", "export", "await", "yield", "match", "loop", "unsafe"])
_ID = r"[A-Za-z_$][\w$]*"
JS_PATTERNS = [  # (pattern, kind, indent-0 only)
    (re.compile(rf"^\s*(?:export\s+(?:default\s+)?)?(?:declare\s+)?(?:async\s+)?function\s*\*?\s*({_ID})\s*[(<]"),
     "function", False),
    (re.compile(rf"^\s*(?:export\s+(?:default\s+)?)?(?:declare\s+)?(?:abstract\s+)?class\s+({_ID})"), "class", False),
    (re.compile(rf"^\s*(?:export\s+)?(?:interface|enum|type)\s+({_ID})\b"), "type", False),
    (re.compile(rf"^\s*(?:export\s+)?(?:const|let|var)\s+({_ID})\s*(?::[^=]+)?=\s*(?:async\s+)?"
                rf"(?:function\b|\([^()]*\)\s*(?::[^=]+)?=>|{_ID}\s*=>|class\b)"), "function", False),
    (re.compile(rf"^(?:export\s+)?(?:const|let|var)\s+({_ID})\s*(?::[^=]+)?="), "variable", True),
    (re.compile(rf"^\s*(?:{_ID}\.)+({_ID})\s*=\s*(?:async\s+)?function\b"), "method", False),
    (re.compile(rf"^\s*({_ID})\s*:\s*(?:async\s+)?function\b"), "method", False),
    (re.compile(rf"^\s+(?:(?:static|async|get|set|public|private|protected|readonly|override)\s+)*\*?({_ID})\s*"
                r"\([^;]*\)\s*(?::\s*[^{;=]+)?\{\s*$"), "method", False),
]
RUST_ITEM = re.compile(r"^\s*(?:pub(?:\s*\([^)]*\))?\s+)?(?:(?:const|async|unsafe|default)\s+)*"
                       r"(?:extern\s+\"[^\"]*\"\s+)?(fn|struct|enum|trait|type|const|static|mod|union)\s+"
                       r"(?:r#)?([A-Za-z_]\w*)")
RUST_MACRO = re.compile(r"^\s*macro_rules!\s*([A-Za-z_]\w*)")
C_FUNCTION = re.compile(r"^(?:[A-Za-z_][\w\s\*]*?[\s\*])?([A-Za-z_]\w*)\s*\(")
C_TYPE_LINE = re.compile(r"^[A-Za-z_][\w\s\*]*$")  # a return type on its own line: "static PyObject *"
JS_REGEX_BEFORE = set("(,=:[!&|?{};+-*%<>~^") | {""}


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str
    line: int  # 0-based: the line that names it
    end: int  # 0-based: the last line of its body (approximate where brackets mislead)
    doc: str | None  # the documentation comment's text (markers and JSDoc tags removed), None when it has none
    doc_first: int | None  # 0-based lines of the comment
    doc_last: int | None


def language_of(path: str) -> str | None:
    """The comment-doc language of a file name, None for any other file (``.d.ts`` declarations included)."""
    if path.endswith(".d.ts"):
        return None
    dot = path.rfind(".")
    return LANGUAGE_OF_SUFFIX.get(path[dot:]) if dot >= 0 else None


def definitions(text: str, language: str) -> list[Definition]:
    """The definitions in a file's text, in line order, each with the documentation comment right above it."""
    lines = text.split("\n")
    masked = mask(text, language).split("\n")  # comments and strings blanked: patterns see code only
    found = []
    for number, line in enumerate(masked):
        named = _match(line, lines[number], language, masked, number)
        if named is None:
            continue
        name, kind, top = named
        if name in KEYWORDS:
            continue
        doc = _doc_above(lines, masked, top, language)
        end = _end(masked, number, language)
        found.append(Definition(name, kind, number, end, doc[0] if doc else None, doc[1] if doc else None,
                                doc[2] if doc else None))
    return found


def _match(line: str, raw: str, language: str, masked: list[str], number: int) -> tuple[str, str, int] | None:
    """(name, kind, first line of the definition above its name: C return types, attributes) or None."""
    if language in ("javascript", "typescript"):
        for pattern, kind, top_only in JS_PATTERNS:
            match = pattern.match(line)
            if match and (not top_only or not line[:1].isspace()):
                return match.group(1), kind, number
        return None
    if language == "rust":
        match = RUST_ITEM.match(line)
        if match:
            return match.group(2), match.group(1), number
        match = RUST_MACRO.match(line)
        return (match.group(1), "macro", number) if match else None
    if language == "c":
        if not line[:1].isalpha() and line[:1] != "_":
            return None
        match = C_FUNCTION.match(line)
        if match is None or line.split()[0] in ("typedef", "return", "else", "struct", "enum", "union", "extern"):
            return None
        signature = " ".join(masked[number:number + 12])
        depth, opening = 0, signature.index("(", match.start(1))
        position = opening
        for position in range(opening, len(signature)):
            depth += {"(": 1, ")": -1}.get(signature[position], 0)
            if depth == 0:
                break
        rest = signature[position + 1:].lstrip()
        if not rest.startswith("{") and not re.match(r"^(?:const\s*)?\{", rest):
            return None  # a prototype or a call, not a definition
        top = number
        while top > 0 and C_TYPE_LINE.match(masked[top - 1]) and masked[top - 1].strip() and \
                not masked[top - 1].rstrip().endswith(("}", ";")):
            top -= 1
        return match.group(1), "function", top
    return None


def _doc_above(lines: list[str], masked: list[str], top: int, language: str) -> tuple[str, int, int] | None:
    """The documentation comment that ends right above line ``top`` (attribute/decorator lines may sit between)."""
    last = top - 1
    while last >= 0 and re.match(r"^\s*(#\[|@\w)", lines[last]):  # Rust attributes, TS decorators
        last -= 1
    if last < 0 or not lines[last].strip():
        return None
    stripped = lines[last].strip()
    if language == "rust":
        first = last
        while first >= 0 and lines[first].strip().startswith("///") and not lines[first].strip().startswith("////"):
            first -= 1
        first += 1
        if first > last:
            return None
        body = [lines[i].strip()[3:] for i in range(first, last + 1)]
        return _clean(body), first, last
    if stripped.endswith("*/") and masked[last].strip() == "":  # a block comment alone on its last line
        first = last
        while first >= 0 and "/*" not in lines[first]:
            first -= 1
        if first < 0 or lines[first].split("/*")[0].strip():
            return None  # code before the comment on its first line
        if language in ("javascript", "typescript") and not lines[first].strip().startswith("/**"):
            return None
        body = "\n".join(lines[first:last + 1]).strip()
        body = re.sub(r"^/\*+!?", "", body)
        body = re.sub(r"\*+/$", "", body)
        parts = [re.sub(r"^\s*\*+ ?", "", part) for part in body.split("\n")]
        return _clean(parts), first, last
    if language == "c" and stripped.startswith("//"):
        first = last
        while first >= 0 and lines[first].strip().startswith("//"):
            first -= 1
        first += 1
        return _clean([lines[i].strip()[2:] for i in range(first, last + 1)]), first, last
    return None


def _clean(parts: list[str]) -> str:
    """The comment's text up to its first tag line (``@param``, ``# Examples``), lines joined by newlines."""
    kept = []
    for part in parts:
        if re.match(r"^\s*(@\w|#\s|```)", part):
            break
        kept.append(part.rstrip())
    return "\n".join(kept).strip()


def _end(masked: list[str], start: int, language: str) -> int:
    """The line a definition starting at ``start`` ends on: where the bracket that opens its body closes, or its
    ``;`` at depth 0; the start line itself when the line closes everything it opened and opened no body."""
    if language == "c":  # preprocessor branches can unbalance brackets: a C body ends at a "}" in column 0
        return next((number for number in range(start, len(masked)) if masked[number].startswith("}")), start)
    depth, opened = 0, False
    for number in range(start, min(len(masked), start + 5000)):
        for char in masked[number]:
            if char in "({[":
                depth += 1
                opened = opened or char == "{"
            elif char in ")}]":
                depth -= 1
                if depth <= 0 and char == "}":
                    return number
            elif char == ";" and depth <= 0:
                return number
        if depth <= 0 and not opened and language != "c":
            code = masked[number].rstrip()
            if code and not code.endswith(("=", ",", "(", "=>", "+", "-", "?", ":", "&&", "||", "|", ".")):
                return number
    indent = re.match(r"\s*", masked[start]).group()  # brackets never closed: the first "}" at its indentation
    return next((number for number in range(start + 1, len(masked))
                 if masked[number].startswith(indent + "}")), start)


def mask(text: str, language: str) -> str:
    """``text`` with comments, strings, character literals (and JavaScript regex literals) replaced by spaces,
    newlines kept: line and column positions stay those of the text."""
    out = list(text)
    i, n = 0, len(text)
    js = language in ("javascript", "typescript")
    previous = ""  # the last non-space code character, for telling a regex literal from a division

    def blank(a: int, b: int) -> None:
        for k in range(a, min(b, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        two = text[i:i + 2]
        if two == "//":
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif two == "/*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            blank(i, j)
            i = j
        elif c in "\"'`" and not (language == "rust" and c == "`"):
            if language == "rust" and c == "'":
                match = re.match(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'\n])'", text[i:i + 12])
                if match is None:  # a lifetime
                    i += 1
                    continue
                blank(i + 1, i + match.end() - 1)
                i += match.end()
                previous = "'"
                continue
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\\":
                    j += 1
                elif text[j] == "\n" and c != "`" and language != "rust":
                    break
                j += 1
            blank(i + 1, j)
            i = j + 1
            previous = c
        elif language == "rust" and re.match(r'r#*"', text[i:i + 8]) and not (i and (text[i - 1].isalnum() or
                                                                                     text[i - 1] == "_")):
            hashes = text[i + 1:].index('"')
            close = '"' + "#" * hashes
            j = text.find(close, i + 2 + hashes)
            j = n if j < 0 else j + len(close)
            blank(i + 1, j - 1)
            i = j
            previous = '"'
        elif js and c == "/" and (previous in JS_REGEX_BEFORE or re.search(r"\b(return|typeof|case|in|of)\s*$",
                                                                           text[max(0, i - 12):i])):
            j, in_class = i + 1, False
            while j < n and text[j] != "\n":
                if text[j] == "\\":
                    j += 2
                    continue
                if text[j] == "[":
                    in_class = True
                elif text[j] == "]":
                    in_class = False
                elif text[j] == "/" and not in_class:
                    break
                j += 1
            if j >= n or text[j] == "\n":  # not a regex after all: a division
                previous = "/"
                i += 1
                continue
            blank(i + 1, j)
            i = j + 1
            previous = "/"
        else:
            if not c.isspace():
                previous = c if not (c.isalnum() or c in "_$") else "a"
            i += 1
    return "".join(out)
