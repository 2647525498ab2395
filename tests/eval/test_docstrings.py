"""eval.datasets.docstrings, the one home of docstring removal, through its three uses: a whole file (the stripped
tree of codebase.strip_docstrings), one function given as code (CodeSearchNet) and a function's lines from its
parsed file (the offline set). Their outputs on real trees are pinned by test_dataset_loaders.py,
test_offline_datasets.py and tests/e2e/test_codebase_quality.py; here, the rules each one keeps."""

from __future__ import annotations

import ast
import textwrap

from eval.datasets.docstrings import function_lines_without_docstring, locate, strip_file, strip_function_source


def test_locate_counts_columns_in_characters_not_bytes():
    source = 'def f(a="éé"): """Doc.""" ; return a'  # ast's columns count the UTF-8 bytes of é twice
    lines = source.split("\n")
    found = locate(ast.parse(source).body[0], lines)
    assert found.before == 'def f(a="éé"): ' and found.after == " ; return a"
    assert lines[0][found.first_column:found.last_column] == '"""Doc."""'
    assert found.has_code_before and not found.alone


def test_locate_finds_only_a_leading_string():
    source = 'x = 1\n"""not a docstring"""\ndef f():\n    return """nor this"""\n'
    assert all(locate(node, source.split("\n")) is None for node in ast.walk(ast.parse(source)))


def test_strip_file_removes_every_docstring_and_keeps_the_code_compiling():
    source = textwrap.dedent('''\
        """Module docstring."""
        import os


        class Empty:
            """Only a docstring: the body gets pass."""


        class Kept:
            """Class docstring
            over two lines."""

            def method(self):
                """Method docstring."""
                return os.sep

            async def inline(self): """Shares its line with code: stays."""
        ''')
    stripped, removed = strip_file(source)
    assert removed == 4
    assert stripped == textwrap.dedent('''\
        import os


        class Empty:
            pass


        class Kept:

            def method(self):
                return os.sep

            async def inline(self): """Shares its line with code: stays."""
        ''')
    compile(stripped, "stripped", "exec")


def test_strip_function_source_cuts_the_span_even_beside_code():
    assert strip_function_source('def f(x): """Doc."""; return x') == "def f(x): return x"
    indented = '    def f(self):\n        """Doc\n        more."""\n        return 1'  # parsed dedented, cut indented
    assert strip_function_source(indented) == "    def f(self):\n        return 1"
    assert strip_function_source('def f():\r\n    """Doc."""\r\n    return 1') == "def f():\n    return 1"
    python2 = 'def g():\n    """Print it."""\n    print "x"'
    assert strip_function_source(python2, "Print it.") == 'def g():\n    print "x"'


def test_function_lines_without_docstring_keep_decorators_dedent_and_refuse_shared_lines():
    source = textwrap.dedent('''\
        class A:
            @staticmethod
            def f(x):
                """Doc."""  # a comment after it goes with its line
                text = """
        a string indented less
        """
                return x

            def g(self): """Shares its line."""; return 1

            def h(self):
                return 2
        ''')
    tree = ast.parse(source)
    f, g, h = tree.body[0].body
    lines = source.split("\n")
    assert function_lines_without_docstring(f, lines) == (
        '@staticmethod\ndef f(x):\n    text = """\na string indented less\n"""\n    return x')
    assert function_lines_without_docstring(g, lines) is None
    assert function_lines_without_docstring(h, lines) is None  # no docstring
