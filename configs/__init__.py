"""The experiment configs (YAML), installed as ``reaf_lightning.configs`` package data.

Commands find them by name: ``reaf-lightning fit --config quickstart`` or
``--config recipes/imagenet --config table5/reaf_resnet50_c72_4-3-4`` read the
packaged ``quickstart.yaml`` and so on, from a wheel as from this folder
(see :mod:`reaf_lightning.config_names`).
"""
