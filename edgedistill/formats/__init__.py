"""export and quantize: RUN/student/merged/ → deployable artifacts under RUN/export/.

- :mod:`.export` and :mod:`.quantize`: the two stages, one job per artifact (:mod:`.jobs`);
- :mod:`.onnx`, :mod:`.ortgenai`, :mod:`.gguf`: each format's tools (optimum, ORT GenAI's model
  builder, llama.cpp's converter and quantizer), imported when a job runs;
- :mod:`.variants`: one quantized variant of a format, built with or without calibration data;
- :mod:`.calibration`: calibration samples from the train split (or a text file), never the eval
  split; :mod:`.imatrix`: llama.cpp importance matrices from them; :mod:`.gptq`: onnxruntime's
  GPTQ fed them;
- :mod:`.parity`: every artifact proves it is still the student, through :mod:`edgedistill.runtimes`;
- :mod:`.quant_loss`: every quantized artifact's KL divergence from the merged student.

The list of finished artifacts lives in :mod:`edgedistill.artifacts`, so eval, bench and report
never import this package. It may import: config, data, rundir, artifacts, registry, runtimes,
errors.
"""
