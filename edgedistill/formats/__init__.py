"""export and quantize: RUN/student/merged/ → deployable artifacts under RUN/export/.

- :mod:`.export` and :mod:`.quantize`: the two stages, one job per artifact (:mod:`.jobs`);
- :mod:`.onnx`, :mod:`.ortgenai`, :mod:`.gguf`: each format's tools (optimum, ORT GenAI's model
  builder, llama.cpp's converter and quantizer), imported when a job runs;
- :mod:`.parity`: every artifact proves it is still the student, through :mod:`edgedistill.runtimes`.

The list of finished artifacts lives in :mod:`edgedistill.artifacts`, so eval, bench and report
never import this package. It may import: config, rundir, artifacts, registry, runtimes, errors.
"""
