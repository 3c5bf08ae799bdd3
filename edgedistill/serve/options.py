"""The flags of ``edgedistill serve`` (click only: the CLI imports this at start-up)."""

from __future__ import annotations

import click

OPTIONS = (
    click.option("--artifact", help="Artifact id to serve (default: the one the report ships)."),
    click.option("--port", type=int, default=8080, show_default=True, help="Port (0: a free one)."),
    click.option("--bind", default="127.0.0.1", show_default=True,
                 help="Address to listen on; anything but loopback exposes the model to the network."),
    click.option("--api-key-env", metavar="NAME",
                 help="Require `Authorization: Bearer <key>`, the key read from this variable."),
    click.option("--slots", type=click.IntRange(1, 256), default=4, show_default=True,
                 help="Requests decoded together (GGUF, continuous batching)."),
    click.option("--context", type=click.IntRange(64), default=2048, show_default=True,
                 help="Tokens per request, prompt and answer (the KV cache holds slots x context)."),
    click.option("--threads", type=click.IntRange(1), help="CPU threads (default: every core)."),
)


def serve_options(f):
    for option in reversed(OPTIONS):
        f = option(f)
    return f
