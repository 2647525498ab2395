"""The names a file defines (functions, methods, classes, types, constants...) and the lines each definition spans.

A language with a tree-sitter grammar installed (``tree-sitter`` and one wheel per grammar, from PyPI) is parsed, and
its definitions come from a tags-style query (``(function_definition name: (identifier) @name) @definition.function``):
Python, JavaScript/JSX, TypeScript/TSX, Go, Rust, Java, C, C++, C#, Ruby and PHP. Any other code language, or one
whose grammar or ``tree-sitter`` itself is not installed (each import is tried once), goes through a regex over lines
that knows the same definition keywords as ``chunking.CODE_BOUNDARY`` and a few more. So does a file larger than
``MAX_PARSE_BYTES`` or one whose parse takes longer than ``PARSE_SECONDS``. A file with syntax errors still parses
(tree-sitter recovers), and the definitions around the error are found.

A ``Symbol``'s span is the whole definition, 1-based and inclusive, from its decorators, attributes or template line
to its last line; ``parent`` is the innermost enclosing definition's name (the class of a method, the receiver type
of a Go method, the ``impl`` type in Rust, ``Foo`` for C++'s ``Foo::bar``, the function around a nested one).
Kinds: ``KINDS``. Python constants are module-level UPPER_CASE assignments; in JavaScript/TypeScript, Go and Rust,
top-level variables are ``variable`` or, when UPPER_CASE, ``constant``.

In the index each chunk's metadata carries, under ``"symbols"``, the definitions that start in its line span
(``symbols_in``) as rows ``[name, kind, start_line, end_line, parent]`` (``rows``; ``symbol_names`` reads them).
"""

from __future__ import annotations

import bisect
import importlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from indexes.lexical import symbol_names  # noqa: F401  (the one reader of the rows, beside their writer)

from .sources import PROSE, language_of

log = logging.getLogger(__name__)

KINDS = ("function", "method", "class", "interface", "struct", "enum", "trait", "type", "constant", "variable",
         "module", "macro")
MAX_PARSE_BYTES = 1 << 20  # a larger file goes through the regex (linear, and such files are rarely hand-written)
PARSE_SECONDS = 2.0  # a parse that takes longer is abandoned for the regex (1 MiB of C++ parses in about 0.3 s)
# not code to look for definitions in: prose and data formats (sources.is_code counts the data formats as code)
NO_DEFINITIONS = PROSE | {"json", "yaml", "toml", "ini", "xml", "css"}
UPPER_CASE = re.compile(r"^_*[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class Symbol:
    name: str
    kind: str  # one of KINDS
    start_line: int  # 1-based, inclusive: the whole definition, decorators and attributes included
    end_line: int
    parent: str | None = None  # the innermost enclosing definition (the class, for a method)


def definitions(path: str, text: str) -> list[Symbol]:
    """The definitions in ``text`` (the content of ``path``, whose suffix tells the language), by start line.
    Never raises on odd input: an empty text has none, and a grammar that fails gives the regex's answer."""
    language = language_of(path)
    if not text or language in NO_DEFINITIONS:
        return []
    grammar_names = _grammar_names(path, language)
    source = text.encode("utf-8", "replace")  # a lone surrogate becomes "?": one byte, no line moves
    if grammar_names and len(source) <= MAX_PARSE_BYTES:
        try:
            found = _parsed(grammar_names, source)
        except Exception as error:  # never fail indexing over a symbol table: the regex answers instead
            log.warning("symbols: tree-sitter failed on %s (%s); the regex finds its definitions", path, error)
            found = None
        if found is not None:
            return found
    return _regex_definitions(text, language)


def symbols_in(symbols: list[Symbol], start_line: int, end_line: int) -> list[Symbol]:
    """The definitions that start inside the line span ``[start_line, end_line]`` (a chunk's), in order.
    ``symbols`` sorted by start line, as ``definitions`` gives them."""
    starts = [s.start_line for s in symbols]
    return symbols[bisect.bisect_left(starts, start_line):bisect.bisect_right(starts, end_line)]


def rows(symbols: Iterable[Symbol]) -> list[list]:
    """Symbols as the index stores them: ``[name, kind, start_line, end_line, parent]`` (JSON-able, compact)."""
    return [[s.name, s.kind, s.start_line, s.end_line, s.parent] for s in symbols]


def from_rows(stored: Iterable[list] | None) -> list[Symbol]:
    """The symbols back from ``rows`` (a Document's ``metadata["symbols"]``)."""
    return [Symbol(name, kind, start, end, parent) for name, kind, start, end, parent in stored or ()]


# ----- tree-sitter
# Each language: (module, function giving the language pointer), the query, and the kinds whose definitions make a
# function inside them a method. Captures: @definition.KIND on the definition's node, @name on its name node, or
# @declarator on a C/C++ declarator that the name is found in; @parent names the parent explicitly (a Go receiver).
# A query that does not compile (a node type that a grammar version lacks) is compiled again pattern by pattern,
# the unknown ones dropped, not the language. When two patterns match the same name, the earlier one wins.
CLASS_LIKE = frozenset({"class", "interface", "struct", "enum", "trait", "impl"})
SCOPES = frozenset({"impl"})  # containers that are not symbols themselves (a Rust impl block)
SPAN_WRAPPERS = frozenset({"decorated_definition", "template_declaration", "export_statement"})
SPAN_PREFIXES = frozenset({"decorator", "attribute_item"})  # siblings just before a definition that belong to it

_PYTHON = r"""
(class_definition name: (identifier) @name) @definition.class
(function_definition name: (identifier) @name) @definition.function
(module (expression_statement (assignment left: (identifier) @name) @definition.constant)
  (#match? @name "^_*[A-Z][A-Z0-9_]*$"))
(module (type_alias_statement (type (identifier) @name)) @definition.type)
"""
_JS_COMMON = r"""
(function_declaration name: (identifier) @name) @definition.function
(generator_function_declaration name: (identifier) @name) @definition.function
(method_definition name: (_) @name) @definition.method
(variable_declarator name: (identifier) @name
  value: [(arrow_function) (function_expression) (generator_function)]) @definition.function
(program (lexical_declaration (variable_declarator name: (identifier) @name) @definition.variable))
(program (variable_declaration (variable_declarator name: (identifier) @name) @definition.variable))
(program (export_statement declaration: (lexical_declaration
  (variable_declarator name: (identifier) @name) @definition.variable)))
(program (export_statement declaration: (variable_declaration
  (variable_declarator name: (identifier) @name) @definition.variable)))
"""
_JAVASCRIPT = _JS_COMMON + r"""
(class_declaration name: (identifier) @name) @definition.class
(class name: (identifier) @name) @definition.class
(field_definition property: (_) @name value: [(arrow_function) (function_expression)]) @definition.method
"""
_TYPESCRIPT = _JS_COMMON + r"""
(class_declaration name: (type_identifier) @name) @definition.class
(abstract_class_declaration name: (type_identifier) @name) @definition.class
(class name: (type_identifier) @name) @definition.class
(public_field_definition name: (_) @name value: [(arrow_function) (function_expression)]) @definition.method
(interface_declaration name: (type_identifier) @name) @definition.interface
(type_alias_declaration name: (type_identifier) @name) @definition.type
(enum_declaration name: (identifier) @name) @definition.enum
(function_signature name: (identifier) @name) @definition.function
(method_signature name: (_) @name) @definition.method
(abstract_method_signature name: (_) @name) @definition.method
(internal_module name: (_) @name) @definition.module
(module name: (_) @name) @definition.module
"""
_GO = r"""
(function_declaration name: (identifier) @name) @definition.function
(method_declaration
  receiver: (parameter_list (parameter_declaration type: [
    (type_identifier) @parent
    (pointer_type (type_identifier) @parent)
    (generic_type type: (type_identifier) @parent)
    (pointer_type (generic_type type: (type_identifier) @parent))]))
  name: (field_identifier) @name) @definition.method
(type_spec name: (type_identifier) @name type: (struct_type)) @definition.struct
(type_spec name: (type_identifier) @name type: (interface_type)) @definition.interface
(type_spec name: (type_identifier) @name) @definition.type
(type_alias name: (type_identifier) @name) @definition.type
(method_elem name: (field_identifier) @name) @definition.method
(source_file (const_declaration (const_spec name: (identifier) @name) @definition.constant))
(source_file (var_declaration (var_spec name: (identifier) @name) @definition.variable))
"""
_RUST = r"""
(function_item name: (identifier) @name) @definition.function
(function_signature_item name: (identifier) @name) @definition.function
(struct_item name: (type_identifier) @name) @definition.struct
(union_item name: (type_identifier) @name) @definition.struct
(enum_item name: (type_identifier) @name) @definition.enum
(trait_item name: (type_identifier) @name) @definition.trait
(type_item name: (type_identifier) @name) @definition.type
(const_item name: (identifier) @name) @definition.constant
(static_item name: (identifier) @name) @definition.variable
(mod_item name: (identifier) @name) @definition.module
(macro_definition name: (identifier) @name) @definition.macro
(impl_item type: [
  (type_identifier) @name
  (generic_type type: (type_identifier) @name)
  (scoped_type_identifier name: (type_identifier) @name)]) @definition.impl
"""
_JAVA = r"""
(class_declaration name: (identifier) @name) @definition.class
(record_declaration name: (identifier) @name) @definition.class
(interface_declaration name: (identifier) @name) @definition.interface
(annotation_type_declaration name: (identifier) @name) @definition.interface
(enum_declaration name: (identifier) @name) @definition.enum
(method_declaration name: (identifier) @name) @definition.method
(constructor_declaration name: (identifier) @name) @definition.method
(compact_constructor_declaration name: (identifier) @name) @definition.method
((field_declaration declarator: (variable_declarator name: (identifier) @name)) @definition.constant
  (#match? @name "^_*[A-Z][A-Z0-9_]*$"))
(constant_declaration declarator: (variable_declarator name: (identifier) @name)) @definition.constant
"""
_C = r"""
(function_definition declarator: (_) @declarator) @definition.function
(struct_specifier name: (type_identifier) @name body: (_)) @definition.struct
(union_specifier name: (type_identifier) @name body: (_)) @definition.struct
(enum_specifier name: (type_identifier) @name body: (_)) @definition.enum
(type_definition declarator: (_) @declarator) @definition.type
(preproc_def name: (identifier) @name) @definition.constant
(preproc_function_def name: (identifier) @name) @definition.macro
"""
_CPP = _C + r"""
(class_specifier name: (_) @name body: (_)) @definition.class
(namespace_definition name: (_) @name) @definition.module
(alias_declaration name: (type_identifier) @name) @definition.type
(concept_definition name: (identifier) @name) @definition.type
(field_declaration declarator: (function_declarator) @declarator) @definition.method
(field_declaration_list (declaration declarator: (function_declarator) @declarator) @definition.method)
"""
_CSHARP = r"""
(class_declaration name: (identifier) @name) @definition.class
(record_declaration name: (identifier) @name) @definition.class
(interface_declaration name: (identifier) @name) @definition.interface
(struct_declaration name: (identifier) @name) @definition.struct
(enum_declaration name: (identifier) @name) @definition.enum
(delegate_declaration name: (identifier) @name) @definition.type
(method_declaration name: (identifier) @name) @definition.method
(constructor_declaration name: (identifier) @name) @definition.method
(local_function_statement name: (identifier) @name) @definition.function
(namespace_declaration name: (_) @name) @definition.module
(file_scoped_namespace_declaration name: (_) @name) @definition.module
"""
_RUBY = r"""
(class name: (_) @name) @definition.class
(module name: (_) @name) @definition.module
(method name: (_) @name) @definition.function
(singleton_method name: (_) @name) @definition.method
(assignment left: (constant) @name) @definition.constant
"""
_PHP = r"""
(function_definition name: (name) @name) @definition.function
(class_declaration name: (name) @name) @definition.class
(interface_declaration name: (name) @name) @definition.interface
(trait_declaration name: (name) @name) @definition.trait
(enum_declaration name: (name) @name) @definition.enum
(method_declaration name: (name) @name) @definition.method
(const_declaration (const_element (name) @name)) @definition.constant
(namespace_definition name: (namespace_name) @name) @definition.module
"""
GRAMMARS: dict[str, tuple[str, str, str, frozenset[str]]] = {
    # name: (module, language function, query, the kinds that make a function inside them a method)
    "python": ("tree_sitter_python", "language", _PYTHON, CLASS_LIKE),
    "javascript": ("tree_sitter_javascript", "language", _JAVASCRIPT, CLASS_LIKE),
    "typescript": ("tree_sitter_typescript", "language_typescript", _TYPESCRIPT, CLASS_LIKE),
    "tsx": ("tree_sitter_typescript", "language_tsx", _TYPESCRIPT, CLASS_LIKE),
    "go": ("tree_sitter_go", "language", _GO, CLASS_LIKE),
    "rust": ("tree_sitter_rust", "language", _RUST, CLASS_LIKE),
    "java": ("tree_sitter_java", "language", _JAVA, CLASS_LIKE),
    "c": ("tree_sitter_c", "language", _C, CLASS_LIKE),
    "cpp": ("tree_sitter_cpp", "language", _CPP, CLASS_LIKE),
    "csharp": ("tree_sitter_c_sharp", "language", _CSHARP, CLASS_LIKE),
    "ruby": ("tree_sitter_ruby", "language", _RUBY, CLASS_LIKE | {"module"}),
    "php": ("tree_sitter_php", "language_php", _PHP, CLASS_LIKE),
}


def _grammar_names(path: str, language: str) -> tuple[str, ...]:
    """The grammars to try, in order: TSX for .tsx, and C++ after C for a .h header (C++ headers are .h too)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".tsx":
        return ("tsx",)
    if suffix == ".h":
        return ("c", "cpp")
    return (language,) if language in GRAMMARS else ()


@dataclass(frozen=True)
class _Grammar:
    language: object  # tree_sitter.Language
    query: object  # tree_sitter.Query
    captures: tuple[str, ...]  # capture index -> name
    method_in: frozenset[str]


_grammars: dict[str, _Grammar | None] = {}
_grammars_lock = threading.Lock()
_local = threading.local()  # a parser and a query cursor per grammar per thread (neither is thread-safe)


def grammar_available(name: str) -> bool:
    """Whether ``name`` (a key of GRAMMARS) is parsed with tree-sitter here, rather than by the regex."""
    return _grammar(name) is not None


def _grammar(name: str) -> _Grammar | None:
    if name not in _grammars:
        with _grammars_lock:
            if name not in _grammars:
                _grammars[name] = _load_grammar(name)
    return _grammars[name]


def _load_grammar(name: str) -> _Grammar | None:
    module_name, function, source, method_in = GRAMMARS[name]
    try:
        import tree_sitter

        language = tree_sitter.Language(getattr(importlib.import_module(module_name), function)())
    except Exception as error:  # not installed, or a grammar this tree-sitter cannot load (ABI version)
        log.info("symbols: no tree-sitter grammar for %s (%s); a regex finds its definitions", name, error)
        return None
    try:
        query = tree_sitter.Query(language, source)
    except Exception:  # a node type this grammar version does not have: the patterns one by one, without it
        patterns = []
        for pattern in _patterns(source):
            try:
                tree_sitter.Query(language, pattern)
            except Exception as error:
                log.info("symbols: %s pattern dropped (%s): %s", name, error, pattern)
                continue
            patterns.append(pattern)
        if not patterns:
            return None
        query = tree_sitter.Query(language, "\n".join(patterns))
    return _Grammar(language, query, tuple(query.capture_name(i) for i in range(query.capture_count)), method_in)


def _patterns(source: str) -> list[str]:
    """A query's top-level patterns, each with its predicates (split where the parentheses balance)."""
    patterns, current, depth = [], [], 0
    for line in source.strip().splitlines():
        current.append(line)
        depth += line.count("(") - line.count(")") + line.count("[") - line.count("]")
        if depth == 0 and line.strip():
            patterns.append("\n".join(current))
            current = []
    return patterns


def _tools(name: str, grammar: _Grammar):
    tools = getattr(_local, "tools", None)
    if tools is None:
        tools = _local.tools = {}
    if name not in tools:
        import tree_sitter

        tools[name] = (tree_sitter.Parser(grammar.language), tree_sitter.QueryCursor(grammar.query))
    return tools[name]


def _parsed(names: tuple[str, ...], source: bytes) -> list[Symbol] | None:
    """The definitions from the first grammar that parses ``source`` without errors (else from the one with the
    fewest), None when no grammar is installed or every parse ran out of time."""
    best = None
    for name in names:
        grammar = _grammar(name)
        if grammar is None:
            continue
        parser, cursor = _tools(name, grammar)
        tree = _parse(parser, source)
        if tree is None:
            continue
        errors = _error_count(tree.root_node) if tree.root_node.has_error else 0
        if best is None or errors < best[0]:
            best = (errors, grammar, cursor, tree)
        if errors == 0:
            break
    if best is None:
        return None
    _, grammar, cursor, tree = best
    return _symbols(grammar, cursor.matches(tree.root_node), source)


def _parse(parser, source: bytes):
    deadline = time.perf_counter() + PARSE_SECONDS
    try:
        # a read callback is what lets a progress callback stop the parse at the deadline
        return parser.parse(lambda byte, point: source[byte:byte + 65536],
                            progress_callback=lambda *_: time.perf_counter() > deadline)
    except ValueError:  # "Parsing failed": the deadline passed
        parser.reset()
        return None


def _error_count(node) -> int:
    """ERROR and MISSING nodes in the tree (0 for a clean parse), counted without visiting clean subtrees."""
    count, stack = 0, [node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            count += 1
        elif node.has_error:
            stack.extend(node.children)
    return count


def _symbols(grammar: _Grammar, matches, source: bytes) -> list[Symbol]:
    lines = _LineIndex(source)
    found: dict[tuple[int, int], tuple[int, int, int, str, str, str | None]] = {}  # name's bytes -> definition
    for pattern, captured in matches:
        kind = name_node = node = None
        parent = None
        for capture, nodes in captured.items():
            if capture.startswith("definition."):
                kind, node = capture[len("definition."):], nodes[0]
            elif capture == "name":
                name_node = nodes[0]
            elif capture == "declarator":
                name_node, parent = _declarator_name(nodes[0], source)
            elif capture == "parent":
                parent = _text(source, nodes[0])
        if node is None or name_node is None:
            continue
        if kind != "module":  # a namespace keeps its whole name (Example.Users), a class its own (A::B -> B)
            name_node = _inner_name(name_node)
        key = (name_node.start_byte, name_node.end_byte)
        if key in found and found[key][2] <= pattern:  # two patterns matched this name: the earlier one wins
            continue
        name = _text(source, name_node)
        if not name:
            continue
        start = _span_start(node)
        found[key] = (start, node.end_byte, pattern, kind, name, parent)
    # the innermost enclosing definition of each: a stack over definitions sorted by start, outermost first
    ordered = sorted(found.values(), key=lambda d: (d[0], -d[1]))
    out, stack = [], []
    for start, end, _, kind, name, parent in ordered:
        explicit = parent is not None  # a Go receiver, C++'s Foo:: before the name
        while stack and stack[-1][1] <= start:
            stack.pop()
        enclosing = stack[-1] if stack else None
        if parent is None and enclosing is not None:
            parent = enclosing[3]
        if kind == "function" and (explicit or (enclosing is not None and enclosing[2] in grammar.method_in)):
            kind = "method"  # in a class body, or C++'s Foo::bar defined outside it
        if kind == "variable" and UPPER_CASE.match(name):
            kind = "constant"
        stack.append((start, end, kind, name))
        if kind not in SCOPES:
            out.append(Symbol(name, kind, lines.line(start), lines.end_line(start, end), parent))
    out.sort(key=lambda s: (s.start_line, -s.end_line))
    return out


def _span_start(node) -> int:
    """Where a definition starts: its decorators, attributes, ``export`` or ``template<...>`` included."""
    while node.parent is not None and node.parent.type in SPAN_WRAPPERS:
        node = node.parent
    start, sibling = node.start_byte, node.prev_named_sibling
    while sibling is not None and sibling.type in SPAN_PREFIXES:
        start, sibling = sibling.start_byte, sibling.prev_named_sibling
    return start


def _inner_name(node):
    """A qualified name's last part (``Foo::Bar`` in Ruby or C++ -> ``Bar``)."""
    while node.type in ("scope_resolution", "qualified_identifier", "scoped_identifier", "qualified_name"):
        inner = node.child_by_field_name("name")
        if inner is None:
            break
        node = inner
    return node


_DECLARATOR_NAMES = frozenset({"identifier", "field_identifier", "type_identifier", "destructor_name",
                               "operator_name", "primitive_type"})


def _declarator_name(node, source: bytes):
    """The name a C/C++ declarator declares (through pointers, references, arrays, parentheses, function
    declarators), and for ``Foo::bar`` the scope ``Foo`` as the parent."""
    parent = None
    while node is not None:
        if node.type in _DECLARATOR_NAMES:
            return node, parent
        if node.type == "qualified_identifier":
            scope = node.child_by_field_name("scope")
            if scope is not None:
                parent = _text(source, scope).split("<", 1)[0].strip() or parent
            node = node.child_by_field_name("name")
            continue
        if node.type == "template_function":
            node = node.child_by_field_name("name")
            continue
        inner = node.child_by_field_name("declarator")
        if inner is None:  # parenthesized_declarator, reference_declarator: the one named child that declares
            inner = next((c for c in node.named_children if c.type.endswith("declarator") or
                          c.type in _DECLARATOR_NAMES or c.type == "qualified_identifier"), None)
        node = inner
    return None, parent


def _text(source: bytes, node) -> str:
    return source[node.start_byte:node.end_byte].decode("utf-8", "replace").strip()


class _LineIndex:
    """Byte offset -> 1-based line number (lines end at "\\n", as chunking and editors count them)."""

    def __init__(self, source: bytes):
        self.starts = [0] + [m.end() for m in re.finditer(b"\n", source)]

    def line(self, byte: int) -> int:
        return bisect.bisect_right(self.starts, byte)

    def end_line(self, start: int, end: int) -> int:
        """The last line of ``[start, end)``: a span that ends just after a newline ends on that newline's line."""
        return max(self.line(start), self.line(max(start, end - 1)))


# ----- the regex fallback: definition keywords at the start of a line (those of chunking.CODE_BOUNDARY and more),
# nesting from indentation, a definition's end where the indentation comes back to its own
_MODIFIERS = (r"(?:export|default|declare|pub(?:\([\w:]+\))?|public|private|protected|internal|static|async|abstract|"
              r"final|sealed|open|override|inline|extern|unsafe|local|data|case|suspend|virtual|partial|readonly)")
_KEYWORDS = {
    "def": "function", "defp": "function", "function": "function", "func": "function", "fun": "function",
    "fn": "function", "sub": "function", "proc": "function", "class": "class", "object": "class",
    "struct": "struct", "enum": "enum", "interface": "interface", "protocol": "interface", "trait": "trait",
    "module": "module", "mod": "module", "defmodule": "module", "package": "module", "namespace": "module",
    "type": "type", "typealias": "type", "impl": "impl", "macro": "macro", "extension": "impl"}
FALLBACK_DEFINITION = re.compile(
    rf"^(?P<indent>[ \t]*)(?:{_MODIFIERS}\s+)*(?P<keyword>{'|'.join(sorted(_KEYWORDS, key=len, reverse=True))})"
    r"\s*(?:<[^>]*>\s*)?\s"  # generics (impl<T>), then at least one space
    r"(?:\([^)]*\)\s*)?"  # a Go receiver
    r"(?:[\w:<>, ]+?\s+for\s+)?"  # Rust's impl Trait for Type: the type
    r"(?P<name>[A-Za-z_$][\w$]*(?:(?:\.|::)[A-Za-z_$][\w$]*)*[?!]?)")
# name() { (shell), name <- function (R), name = function (Lua, JavaScript)
FALLBACK_FUNCTION = re.compile(
    r"^(?P<indent>[ \t]*)(?P<name>[A-Za-z_][\w.:-]*)\s*(?:\(\)\s*\{|(?:<-|=)\s*function\b)")
FALLBACK_CONSTANT = re.compile(r"^(?P<name>_*[A-Z][A-Z0-9_]*)\s*(?::[^=]*)?=(?!=)")  # Python, Ruby: module level
_CONSTANT_LANGUAGES = frozenset({"python", "ruby"})


def _regex_definitions(text: str, language: str) -> list[Symbol]:
    lines = text.split("\n")
    found: list[tuple[int, int, str, str]] = []  # line index, indent, kind, name
    for number, line in enumerate(lines):
        match = FALLBACK_DEFINITION.match(line) or FALLBACK_FUNCTION.match(line)
        if match is not None:
            keyword = match.groupdict().get("keyword")
            kind = _KEYWORDS[keyword] if keyword else "function"
            found.append((number, _indent(match.group("indent")), kind, match.group("name")))
        elif language in _CONSTANT_LANGUAGES and (match := FALLBACK_CONSTANT.match(line)):
            found.append((number, 0, "constant", match.group("name")))
    out: list[Symbol] = []
    stack: list[tuple[int, int, str, str]] = []  # enclosing definitions: end line index, indent, kind, name
    for number, indent, kind, name in found:
        end = number if kind == "constant" else _block_end(lines, number, indent)
        while stack and (stack[-1][0] < number or stack[-1][1] >= indent):
            stack.pop()
        parent = stack[-1][3] if stack else None
        if kind != "module" and ("." in name or "::" in name):  # Lua's M.f, Ruby's self.f, Rust's a::B
            prefix, name = re.split(r"\.|::", name)[-2:]
            parent = parent if prefix == "self" else prefix
        if kind == "function" and stack and stack[-1][2] in CLASS_LIKE:
            kind = "method"
        start = number
        while start > 0 and lines[start - 1].strip().startswith("@") and _indent(lines[start - 1]) == indent:
            start -= 1  # decorators and annotations belong to the definition under them
        if kind != "impl":
            out.append(Symbol(name, kind, start + 1, end + 1, parent))
        stack.append((end, indent, kind, name))
    out.sort(key=lambda s: (s.start_line, -s.end_line))
    return out


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" \t")) + text[:len(text) - len(text.lstrip(" \t"))].count("\t") * 3


def _block_end(lines: list[str], number: int, indent: int) -> int:
    """The last line of the block that starts at ``number``: up to the next non-blank line indented no deeper
    (included when it closes the block: ``}``, ``end``), trailing blank lines left out; a line that starts with a
    closing parenthesis or bracket (a multi-line signature's end) does not end the block."""
    last = number
    for i in range(number + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped:
            continue
        if _indent(lines[i]) <= indent and stripped[0] not in ")]":  # "):" ends a signature, not the block
            closes = stripped[0] == "}" or (stripped[:3] == "end" and not stripped[3:4].isalnum())
            return i if closes and _indent(lines[i]) == indent else last
        last = i
    return last
