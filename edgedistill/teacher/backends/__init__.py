"""Teacher backends, one module each (openai, gguf, hf), named in ``edgedistill.teacher.BACKENDS``;
each has one function ``answer_all(cfg, requests, sink)`` and imports its library inside it."""
