"""report: report.json (the contract in DESIGN.md), report.md, report.html, and the gates.

- :mod:`.build`: the ``report`` stage, report.json's content from eval, bench and the artifacts;
- :mod:`.gates`: each gate's verdict and its description;
- :mod:`.render`: Markdown and HTML with matplotlib plots.

May import: config, rundir, artifacts, registry, evaluate.ladder (its summary), bench.run (its
records), errors.
"""
