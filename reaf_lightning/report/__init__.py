"""From finished runs to the paper's tables: ``metrics.json`` per run, ``reaf-report`` over many.

* :mod:`~reaf_lightning.report.record`: :func:`find_runs`, which reads back the run
  records (:mod:`reaf_lightning.record`) that every ``reaf-lightning`` run writes;
* :mod:`~reaf_lightning.report.tables`: mean ± std over seeds per experiment,
  matched to the paper's rows;
* :mod:`~reaf_lightning.report.figure`: Table 3's error-vs-MACs figure;
* :mod:`~reaf_lightning.report.cli`: the ``reaf-report`` command.

Nothing is imported here, so that ``reaf-report --help`` does not load Lightning.
"""
