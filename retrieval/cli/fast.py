"""``mret search`` answered by a warm server before anything heavy is imported (typer, rich, torch): the standard
library, the server file and one HTTP request. Anything this parser does not fully understand (``--help``, ``--full``,
``--per-file``, an unknown or malformed option), or no warm server, or a server that cannot answer, returns False
and the full command runs as always; it reports every error, so none is reported here."""

from __future__ import annotations

from pathlib import Path

from retrieval.fusion import MODES

VALUED = {"--index-dir": "index_dir", "-k": "k", "--top-k": "k", "--path-glob": "path_glob", "-g": "path_glob",
          "--type": "file_type", "-t": "file_type", "--mode": "mode"}
REPEATED = {"path_glob", "file_type"}
FLAGS = {"--json": "as_json", "--keep-warm": None}  # --keep-warm: a warm server is what it asks for


def parse_search(argv: list[str]) -> dict | None:
    """The options of ``mret search`` (after the word search), or None when the full command must parse them."""
    options: dict = {"query": None, "index_dir": None, "k": "10", "path_glob": [], "file_type": [], "mode": "hybrid",
                     "as_json": False}
    position = 0
    while position < len(argv):
        word = argv[position]
        name, equals, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if name in FLAGS and not equals:
            if FLAGS[name]:
                options[FLAGS[name]] = True
        elif name in VALUED:
            if not equals:
                position += 1
                if position == len(argv):
                    return None
                value = argv[position]
            key = VALUED[name]
            if key in REPEATED:
                options[key].append(value)
            else:
                options[key] = value
        elif word.startswith("-") or options["query"] is not None:
            return None  # --help, --full, --per-file, "--", a second positional...: the full command's to parse
        else:
            options["query"] = word
        position += 1
    if options["query"] is None or options["mode"] not in MODES:
        return None
    try:
        options["k"] = int(options["k"])
    except ValueError:
        return None
    if options["k"] < 1:
        return None
    return options


def run_warm_search(argv: list[str]) -> bool:
    """True when a warm server answered ``mret search`` (printed); False: run the full command. A closed output
    pipe (``| head``) ends it quietly with exit code 1, as click's full command does; Ctrl-C with 130, no
    traceback either way."""
    try:
        return _warm_search(argv)
    except BrokenPipeError:
        import os
        import sys

        devnull = os.open(os.devnull, os.O_WRONLY)  # the interpreter's last flush of stdout must not fail again
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (tests)
            sys.stdout = open(os.devnull, "w")
        finally:
            os.close(devnull)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _warm_search(argv: list[str]) -> bool:
    if not argv or argv[0] != "search":
        return False
    options = parse_search(argv[1:])
    if options is None:
        return False
    from retrieval.serve.warm import warm_search

    index_dir = Path(options["index_dir"]) if options["index_dir"] else None
    hits = warm_search(index_dir, options["query"], options["k"], options["path_glob"] or None,
                       options["file_type"] or None, options["mode"])
    if hits is None:
        return False
    from .search_output import print_hits

    print_hits(hits, options["query"], options["as_json"])
    return True
