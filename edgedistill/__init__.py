"""edgedistill: distil a big LLM into a small one that runs on the edge, and prove what survived."""

__version__ = "0.1.0"
