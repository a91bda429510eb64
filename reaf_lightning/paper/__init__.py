"""The paper's home: its tables, the zoo, the configs and sweeps made from them, the comparison.

* :mod:`~reaf_lightning.paper.tables`: Tables 1-7 of the paper as typed rows
  (``paper_tables.json``, transcribed from the published text) and what each row builds.
* :mod:`~reaf_lightning.paper.zoo`: ``reaf-zoo``, our counts next to every row.
* :mod:`~reaf_lightning.paper.configs`: one training config per experiment row
  (``configs/<table>/<row>.yaml``).
* :mod:`~reaf_lightning.paper.sweeps`: the W&B sweep files (``configs/sweeps/``).
* :mod:`~reaf_lightning.paper.compare`: experiments matched to the paper's rows, and
  whether they trained the paper's recipe (``reaf-report``'s comparison with the paper).

``python -m reaf_lightning.paper --help`` regenerates the configs and sweeps and
answers the SLURM script's queries. Nothing is imported here, so that
``reaf-zoo --help`` does not load torch.
"""
