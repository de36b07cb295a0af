"""What the tests share besides fixtures (those stay in ``tests/conftest.py``), by topic:

- :mod:`helpers.stores`: a private MLflow store and what a run left in it, read through the
  store's API as users do;
- :mod:`helpers.runs`: the real experiment configs shrunk to seconds on synthetic tasks, and a
  sequence run in a new run;
- :mod:`helpers.disks`: a small file system to fill (a full disk, for real);
- :mod:`helpers.servers`: real PostgreSQL and MLflow servers, started with :mod:`pipeline.server`.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject's pytest options), so a test file
imports them as ``from helpers.runs import run``.
"""
