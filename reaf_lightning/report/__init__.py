"""From finished runs to the paper's tables: the run records of many runs -> ``reaf-report``.

* :mod:`~reaf_lightning.runs.find`: :func:`find_runs` reads every run's record
  (``metrics.json``, :mod:`reaf_lightning.runs.record`) as untrusted input;
* :mod:`~reaf_lightning.report.summary`: mean ± std over the seeds of runs that
  trained the same thing, matched to the paper's rows;
* :mod:`~reaf_lightning.report.intervals`: the intervals over seeds (Student t for a
  row, Welch for a REAF row against its baseline);
* :mod:`~reaf_lightning.report.figure`: Table 3's error-vs-MACs figure;
* :mod:`~reaf_lightning.report.cli`: the ``reaf-report`` command.

Nothing is imported here, so that ``reaf-report --help`` does not load Lightning.
"""
