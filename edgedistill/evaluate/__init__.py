"""eval: the retention ladder.

- :mod:`.tasks`: task families, how an answer is pulled out of a reply, the checks a teacher
  answer must pass (pure Python);
- :mod:`.metrics`: per-example and corpus scores through rouge-score and sacrebleu;
- :mod:`.ladder`: the ``eval`` stage: teacher, student before and after, every artifact, each run
  through :mod:`edgedistill.runtimes`, with paired-bootstrap intervals on retention.

May import: config, rundir, data, artifacts, registry, runtimes, models, train.student, errors.
"""
