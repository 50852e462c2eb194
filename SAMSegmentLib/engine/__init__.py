"""The engine behind one session API, in this process or in another one.

- ``api``: the session API (Engine, EngineSession, Request, SessionSpec) every caller uses
- ``core``: volumes, shared models, sessions and jobs; one priority gate per device (``gate``)
- ``local``: the in-process implementation (CLI default, tests)
- ``server``: ``samsegment serve``, the core behind HTTP (Starlette on uvicorn)
- ``client`` / ``http_io``: the non-blocking HTTP client of that server (Slicer, remote use)
- ``child``: the local engine child process that Slicer starts
- ``wire``: binary payloads (masks as compressed bounding boxes, volumes, record streams)

Importing this package imports nothing heavy (no torch, no server stack).
"""
