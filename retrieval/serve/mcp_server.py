"""``mret mcp``: the index as MCP tools for coding agents (stdio, the official ``mcp`` SDK).

Tools: ``search`` (the index's best chunks for a question in words), ``status`` (what is indexed), ``related``
(chunks like a span of a file). Results are short, for an agent's context: path:start-end, score and a few snippet
lines. Before each search the index is brought up to date with the tree: the stat pass of a no-change ``mret index``
(milliseconds), encoding only what the agent (or anyone) just changed; if that takes longer than a few seconds the
search answers from the last commit while the run goes on in the background.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from ..codebase.snippets import best_lines, query_terms
from .service import IndexingStopped, TreeService

REFRESH_WAIT_S = 5.0
SNIPPET_LINES = 3
MAX_K = 50
log = logging.getLogger("mret.mcp")

INSTRUCTIONS = ("Semantic search over this repository's files (code and docs), by meaning rather than exact text. "
                "Use `search` to find where something is implemented or explained when you do not know the name to "
                "grep for; use grep for exact identifiers. Results are path:start-end (1-based, inclusive) with a "
                "few lines; open the file to read more.")
SEARCH_DOC = ("Find the code or docs that match a description in natural language (\"where are HTTP retries "
              "configured\", \"parse the config file\"). Use it before grep when you do not know the exact names. "
              "Returns up to k results as path:start-end, score, and the best-matching lines. path_glob: "
              "gitignore-style pattern ('src/**/*.py', '*.md'); type: a language or extension (python, md); mode: "
              "hybrid (default), semantic or lexical where the index supports it.")
STATUS_DOC = "What the index holds: root folder, model, number of files and chunks, languages, last update."
RELATED_DOC = ("Find code similar to a span of a file (other implementations, duplicates, callers with the same "
               "shape, the tests of a function): give a path relative to the root and optionally the 1-based line "
               "span; the span itself is left out of the results.")


class Freshness:
    """Brings the index up to date before a search, one run at a time, waiting for it at most ``wait`` seconds from
    the run's start: searches that arrive while a long run goes on wait only what is left of that (then answer from
    the last commit), not ``wait`` each."""

    def __init__(self, service: TreeService, wait: float = REFRESH_WAIT_S):
        self.service, self.wait = service, wait
        self._guard = threading.Lock()
        self._done: threading.Event | None = None
        self._started = 0.0

    def refresh(self) -> None:
        with self._guard:
            if self._done is None or self._done.is_set():
                self._done, self._started = threading.Event(), time.monotonic()
                threading.Thread(target=self._run, args=(self._done,), daemon=True, name="refresh").start()
            done, deadline = self._done, self._started + self.wait
        done.wait(max(0.0, deadline - time.monotonic()))

    def _run(self, done: threading.Event) -> None:
        try:
            self.service.index()  # stops at its next batch when the server closes (the client went away)
        except IndexingStopped:
            pass
        except Exception as error:  # a busy or damaged index: search what is committed
            log.warning("could not bring the index up to date: %s", error)
        finally:
            done.set()


def format_results(results: list[dict[str, Any]]) -> str:
    if not results:
        return "no results"
    out = []
    for r in results:
        out.append(f"{r['path']}:{r['start_line']}-{r['end_line']}  score {r['score']:.3f}")
        first = r.get("snippet_line", r["start_line"])
        out += [f"  {first + i:>5}  {line}" for i, line in enumerate(r["snippet"].split("\n")[:SNIPPET_LINES])]
    return "\n".join(out)


def related(service: TreeService, path: str, start_line: int | None, end_line: int | None,
            k: int) -> list[dict[str, Any]]:
    """Chunks whose vectors are nearest the span's, the span's own chunks left out."""
    from ..codebase.config import RetrieverError

    retriever = service.retriever
    root = Path(retriever.root).resolve()
    file = (root / path).resolve()  # relative to the root whatever the server's working folder (an absolute path
    if not file.is_relative_to(root):  # stays itself); nothing outside the root is read
        raise RetrieverError(f"{path} is not under the indexed root {root}")
    relative = file.relative_to(root).as_posix()
    if not file.is_file():
        raise RetrieverError(f"no file {relative} under {retriever.root}")
    lines = file.read_text(encoding="utf-8", errors="replace").split("\n")
    start, end = max(1, start_line or 1), min(len(lines), end_line or len(lines))
    if start > end:
        raise RetrieverError(f"the span {start}-{end} is empty ({relative} has {len(lines)} lines)")
    text = "\n".join(lines[start - 1:end])
    embedding = retriever.model.encode_documents([text], show_progress=False)
    found = retriever.vectors.search(embedding, k=k + 8)[0]
    terms = query_terms(text)
    results = []
    for (_, score), doc in zip(found, retriever.vectors.documents([i for i, _ in found])):
        if doc is None or (doc.source == relative and (doc.start_line or 1) <= end and (doc.end_line or 1) >= start):
            continue
        offset, best = best_lines(doc.text or "", terms)
        results.append({"path": doc.source, "start_line": doc.start_line, "end_line": doc.end_line,
                        "score": round(float(score), 6), "snippet": "\n".join(best),
                        "snippet_line": (doc.start_line or 1) + offset})
    return results[:k]


def build_server(service: TreeService) -> Any:
    """The MCP server with the three tools (run it with ``.run("stdio")``)."""
    try:
        from mcp.server.mcpserver import MCPServer  # mcp >= 2
    except ImportError:  # mcp 1.x
        from mcp.server.fastmcp import FastMCP as MCPServer  # type: ignore[no-redef]

    server = MCPServer("modernretrieval", instructions=INSTRUCTIONS)
    freshness = Freshness(service)

    @server.tool(description=SEARCH_DOC, structured_output=False)
    def search(query: str, k: int = 8, path_glob: str | None = None, type: str | None = None,
               mode: str | None = None) -> str:
        freshness.refresh()
        return format_results(service.search(query, max(1, min(k, MAX_K)), mode, path_glob, type))

    @server.tool(description=STATUS_DOC, structured_output=False)
    def status() -> str:
        s = service.status()
        languages = ", ".join(f"{name} {n}" for name, n in list(s["languages"].items())[:8])
        return (f"root {s['root']}\nmodel {s['model']} ({s['kind']})\n{s['files']} files, {s['chunks']} chunks, "
                f"{s['tokens']} tokens\nlanguages: {languages or '-'}\nlast run: {s['last_run'] or '-'}")

    @server.tool(name="related", description=RELATED_DOC, structured_output=False)
    def related_tool(path: str, start_line: int | None = None, end_line: int | None = None, k: int = 5) -> str:
        freshness.refresh()
        return format_results(related(service, path, start_line, end_line, max(1, min(k, MAX_K))))

    return server


def run_stdio(service: TreeService) -> None:
    """Serve MCP on stdin/stdout until the client closes it; the model loads in the background meanwhile."""
    threading.Thread(target=service.warm_up, daemon=True, name="warm-up").start()
    build_server(service).run("stdio")
