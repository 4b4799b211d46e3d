"""Stage 5: the HTML report of one run and the index of every run.

Reads only what the store stage wrote (the run folder and the registry, laid out as
``tasks.core.runs`` says) and the test images of the dataset cache named in the run's
metadata.json. Where things are: ``config``, ``plots`` (pure matplotlib), ``context`` (what the
pages show), ``changes`` (what differs from the champion), ``rendering`` (the pages), ``links``,
``publishing`` (Prefect artifacts), ``templates/``. The Prefect task (``build_report``) is in
``tasks.report.tasks``.
"""
