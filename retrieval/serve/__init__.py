"""A warm, always-current index that tools can call: ``mret serve`` (HTTP, FastAPI), ``mret mcp`` (coding agents over
stdio), ``mret watch`` (the index follows the tree), and the fast path of ``mret search`` (a server already running
for the index answers instead of a new process loading the model).

    batching.py   many threads' query encodings gathered into one encoder call (dynamic batching)
    service.py    what a server serves: a tree's ``Retriever`` or a document collection, behind one small interface
    collection.py document collections that are not a tree (ids, text, metadata; filters over metadata)
    app.py        the HTTP API: routes, limits, auth, JSON errors
    runner.py     running the app: loopback and key checks, the server file, idle exit, --watch
    watch.py      watchfiles -> debounced incremental runs
    mcp_server.py the MCP tools (search, status, related)
    warm.py       stdlib-only client side of the server file: found cheaply by ``mret search``, ``mret stop``

Only warm.py may be imported by a command that does not serve: the rest pulls in FastAPI, uvicorn or the model.
"""
