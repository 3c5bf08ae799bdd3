"""``edgedistill serve RUN``: one artifact of a run behind an OpenAI-compatible chat endpoint.

``run`` picks the artifact and starts it (the command's one function, ``serve``); ``engine`` holds
the decoding side (continuous batching for GGUF, one request at a time otherwise); ``app`` the
HTTP side (FastAPI on uvicorn); ``options`` the command's flags (click only, so the CLI stays
light). The concurrency bench drives the same engine and app on loopback.
"""
