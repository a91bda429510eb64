"""What ``reaf-analysis`` measures and compares: every network on the same images.

Each network (every seed of every model) is streamed over the same loader once: its class
selectivity per layer (:func:`reaf_lightning.analysis.hooks.compute_class_means`) and, from
the same forward passes, its top-1 accuracy (:class:`~reaf_lightning.analysis.hooks.TopOne`),
with a warning for a network whose accuracy cannot be told from chance (ours: the
channels of a network that has not learned the task say nothing about the model). The
tables then follow, per network (:mod:`.stats`), per model over its seeds and model
against model (:mod:`.seeds`), and the per-channel KS test within each pair of networks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from reaf_lightning.errors import NumericalError

from .seeds import compare_models, over_seeds
from .stats import at_chance, ks_tests, selectivity_frame, summarize

__all__ = ["Measured", "Tables", "ks_overview", "measure_networks", "per_network_table", "tables"]


@dataclass
class Measured:
    """Every network's SI per layer (``{model: {run: {layer: SI}}}``), its accuracy
    (``{(model, run): top-1 or None}``) and one line per network at chance level."""

    results: dict[str, dict[str, dict[str, Any]]]
    accuracy: dict[tuple[str, str], float | None]
    at_chance: list[str]


def measure_networks(
    networks: Sequence[Any],
    loader: Iterable,
    *,
    alpha: float,
    announce: Callable[[Any], None] = lambda net: None,
    **kwargs: Any,
) -> Measured:
    """Stream ``loader`` through every network (a :class:`~.loading.LoadedModel`).

    Args:
        networks: The networks, each moved back to the CPU afterwards.
        loader: ``(images, labels)`` batches, the same for every network.
        alpha: Level of the chance test (:func:`.stats.at_chance`).
        announce: Called with each network before it runs (a progress line).
        kwargs: :func:`~.hooks.compute_class_means`'s settings (layers, num_classes,
            reduction, device, max_batches, progress).

    Raises:
        NumericalError: NaN or inf activations, naming the model.
    """
    import torch

    from .hooks import TopOne, compute_class_means

    measured = Measured({}, {}, [])
    for net in networks:
        announce(net)
        top1 = TopOne(kwargs.get("num_classes"))
        try:
            stats = compute_class_means(net.net, loader, on_output=top1, **kwargs)
        except NumericalError as err:
            raise NumericalError(f"model {net.label!r}: {err}") from err
        net.net.to(torch.device("cpu"))
        selectivity = {layer: si.cpu() for layer, si in stats.selectivity().items()}
        measured.results.setdefault(net.label, {})[net.run] = selectivity
        measured.accuracy[(net.label, net.run)] = top1.accuracy
        if top1.accuracy is None:
            continue
        share, p = at_chance(top1.correct, top1.total, stats.counts.tolist(), alpha)
        if not p < alpha:
            measured.at_chance.append(
                f"{net.name}: top-1 accuracy {top1.accuracy:.3f} on these {top1.total} images "
                f"is at chance level (the most frequent class is {share:.3f} of them; one-sided "
                f"binomial test p = {p:.2g}): its channels are those of a network that has not "
                "learned the task"
            )
    return measured


@dataclass
class Tables:
    """The tables of one analysis (see :func:`tables`)."""

    frame: pd.DataFrame
    summary: pd.DataFrame
    seeds: pd.DataFrame
    difference: pd.DataFrame | None
    ks: pd.DataFrame | None


def tables(measured: Measured, alpha: float) -> Tables:
    """Raw values, per network, per model over seeds (``1 - alpha`` intervals) and, for two
    models, their difference over seeds and the KS test within each pair of networks."""
    frame = selectivity_frame(measured.results)
    summary = summarize(frame, measured.accuracy)
    level = 1.0 - alpha
    labels = list(measured.results)
    two = len(labels) == 2
    return Tables(
        frame=frame,
        summary=summary,
        seeds=over_seeds(summary, level),
        difference=compare_models(summary, labels[0], labels[1], level) if two else None,
        ks=ks_tests(frame, alpha=alpha) if two else None,
    )


def per_network_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per network: its accuracy, then its mean SI of every layer."""
    keys = ["model", "run"]
    table = summary.pivot_table(
        index=keys, columns="layer", values="mean", observed=True, sort=False
    )
    table.insert(0, "acc1", summary.groupby(keys, observed=True, sort=False)["acc1"].first())
    table.columns = [str(c) for c in table.columns]
    return table.reset_index()


def ks_overview(ks: pd.DataFrame) -> pd.DataFrame:
    """Per layer over the pairs of networks: how many differ at alpha, median D and p."""
    grouped = ks.groupby("layer", observed=True, sort=False)
    return grouped.agg(
        pairs=("differ", "size"), differ=("differ", "sum"),
        median_ks_statistic=("ks_statistic", "median"), median_p_value=("p_value", "median"),
    ).reset_index()  # fmt: skip
