"""``reaf-analysis``: class selectivity of one or two models (paper §IV-E, Figures 2-4).

Examples (``configs/analysis/figure*.yaml`` hold the paper's settings)::

    reaf-analysis --config configs/analysis/figure2.yaml --data.init_args.root /data/imagenet

    reaf-analysis --model_a.checkpoint logs/study/quickstart_baseline \\
        --model_b.checkpoint logs/study/quickstart --output_dir outputs/study

A model is one network or several (an experiment directory: its seeds). The command
checks that ``output_dir`` is writable and loads every network first (a bad checkpoint
or output directory fails before any compute), then streams the validation split
through each network (:mod:`.compare`): its class selectivity per layer and its top-1
accuracy on the same images, with a warning for a network at chance level. It prints
each network's numbers, each model over its seeds and, for two models, their difference
over seeds with its interval (:mod:`.seeds`) and the per-channel KS test within each pair
of networks, labelled as such; then writes the figure (PNG, PDF), the raw values and the
tables atomically.

Data: without ``--data`` the data module recorded by model_a's run is rebuilt; from a
file only names are taken (:mod:`.run_data`): the class, matched against the package's
own data modules and never imported by the name in a file, and what the network was
fed (image size, normalisation, the validation split). Every path, download, cache and
worker setting comes from the command line or the defaults. Settings given on the
command line win, and every input fed otherwise than a network was trained with is
printed. Layers whose outputs can be negative are refused (:mod:`.nonnegative`);
outputs follow the package's output rules (:mod:`reaf_lightning.io`), checked before
anything is loaded.

Errors follow :mod:`reaf_lightning.errors` (one line, exit 2 for user errors,
3 for NaN/inf weights or activations). Only the parser is built at import, so
``--help`` and argument errors answer without importing torch.
"""

from __future__ import annotations

import abc
import warnings
from pathlib import Path
from typing import Any, Literal, NoReturn

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from reaf_lightning.commands import parse, prepare_arguments, run_main
from reaf_lightning.errors import ConfigError

from .spec import ModelSpec

__all__ = ["build_parser", "main"]

PROG = "reaf-analysis"


class DataModule(abc.ABC):  # noqa: B024 - structural check by __subclasshook__
    """A data module (any class with LightningDataModule's ``prepare_data``, ``setup`` and
    ``val_dataloader``). Checked by shape so that parsing needs no Lightning import."""

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        methods = ("prepare_data", "setup", "val_dataloader")
        return all(callable(getattr(other, m, None)) for m in methods) or NotImplemented


def build_parser() -> ArgumentParser:
    """The command's parser: ``--config`` YAML files and flags compose (later wins)."""
    parser = ArgumentParser(
        prog=PROG,
        description="Class selectivity histograms of one or two models (REAF paper, Figs. 2-4).",
        default_env=False,
        exit_on_error=False,
    )
    add = parser.add_argument
    add("--config", action=ActionConfigFile, help="YAML config file(s).")
    add(
        "--model_a",
        type=ModelSpec,
        required=True,
        help="First model: one network, or several (its seeds, e.g. an experiment directory).",
    )
    add("--model_b", type=ModelSpec | None, default=None, help="Optional second model.")
    parser.add_subclass_arguments(
        DataModule, "data", required=False,
        help="Data module (full class path); default: the one recorded in model_a's checkpoint.",
    )  # fmt: skip
    add("--split", type=Literal["val", "test"], default="val", help="Which dataloader to use.")
    add(
        "--layers",
        type=list[str] | None,
        default=None,
        help="Modules to analyse (dotted names); default the paper's layer1..layer4, avgpool.",
    )
    add(
        "--reduction",
        type=Literal["mean", "none"],
        default="mean",
        help="'mean': one unit per channel (paper); 'none': every (c, h, w) unit.",
    )
    add(
        "--plot_layers",
        type=list[str] | str,
        default="all",
        help="Panels: 'all' (duplicates drawn once), 'most_separated' (largest KS statistic, "
        "as the paper chooses), or layer names.",
    )
    add(
        "--width",
        type=Literal["auto", "column", "page"],
        default="auto",
        help="Figure width: IEEE column 3.5 in, page 7.16 in; auto: column for one panel.",
    )
    add("--output_dir", type=str, required=True, help="Where the figure and tables go.")
    add("--stem", type=str, default="selectivity", help="Output file prefix.")
    add("--title", type=str | None, default=None, help="Figure title (default none: captions).")
    add("--device", type=str, default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda:0'.")
    add("--max_batches", type=int | None, default=None, help="Stop after N batches (smoke runs).")
    add(
        "--alpha",
        type=float,
        default=0.05,
        help="Significance level of the tests; the intervals over seeds are 1 - alpha.",
    )
    add("--progress", type=bool, default=True, help="tqdm bar over batches.")
    add(
        "--weights_only",
        type=bool,
        default=True,
        help="Load checkpoints with the safe unpickler; false only for files you trust.",
    )
    add(
        "--wandb_project",
        type=str | None,
        default=None,
        help="Log figure, tables and the compared checkpoints to a W&B run in this project.",
    )
    add(
        "--wandb_mode",
        type=Literal["auto", "online", "offline", "disabled"],
        default="auto",
        help="auto: online with credentials and network, else offline (as training).",
    )
    return parser  # fmt: skip


def main(args: list[str] | None = None) -> NoReturn:
    """Entry point of ``reaf-analysis``; ``args`` defaults to ``sys.argv[1:]``."""
    run_main(PROG, _main, args)


def _main(argv: list[str]) -> None:
    argv = prepare_arguments(argv, groups=("analysis",))  # --config figure2
    parser = build_parser()
    cfg = parse(parser, argv)
    explicit = parse(parser, argv, defaults=False)  # what the user set, to merge data
    _run(cfg, explicit)


def _run(cfg: Namespace, explicit: Namespace) -> None:
    if cfg.max_batches is not None and cfg.max_batches < 1:
        raise ConfigError(f"--max_batches must be >= 1, got {cfg.max_batches}")
    if not 0.0 < cfg.alpha < 1.0:
        raise ConfigError(f"--alpha must be in (0, 1), got {cfg.alpha}")
    from reaf_lightning.io import check_outputs, check_stem, ensure_writable

    check_stem(cfg.stem)
    specs = [ModelSpec(**ns.as_dict()) for ns in (cfg.model_a, cfg.model_b) if ns is not None]
    inputs = _inputs(cfg, specs)
    ensure_writable(cfg.output_dir)
    from .plots import output_paths

    paths = output_paths(cfg.output_dir, cfg.stem, len(specs) == 2, with_seeds=True)
    check_outputs(list(paths.values()), inputs)

    from .loading import load_models

    device = _device(cfg.device)
    # Load everything before computing anything: a bad checkpoint fails fast. A checkpoint
    # says its own classes; a state_dict takes the data's, for model_a as for model_b.
    first = load_models(specs[0], weights_only=cfg.weights_only) if specs[0].checkpoint else None
    data = _data_module(cfg, explicit, first[0] if first else None)
    num_classes = getattr(data, "num_classes", None)
    models = [
        first if i == 0 and first else load_models(s, num_classes, cfg.weights_only)
        for i, s in enumerate(specs)
    ]
    labels = [group[0].label for group in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"both models are labelled {labels[0]!r}; set --model_b.label")
    networks = [net for group in models for net in group]
    for net in networks:
        _check_classes(net.name, net.net, num_classes)

    data.prepare_data()
    data.setup("validate" if cfg.split == "val" else "test")
    _note_inputs(data, networks)
    loader = data.val_dataloader() if cfg.split == "val" else data.test_dataloader()
    from .compare import measure_networks

    measured = measure_networks(
        networks, loader, alpha=cfg.alpha, layers=cfg.layers, num_classes=num_classes,
        reduction=cfg.reduction, device=device, max_batches=cfg.max_batches,
        progress=cfg.progress,
        announce=lambda net: print(
            f"[{PROG}] {net.name}: class selectivity on {type(data).__name__}/{cfg.split}"
        ),
    )  # fmt: skip
    _report(cfg, measured, networks, inputs)


def _report(cfg: Namespace, measured, networks, inputs: list[str]) -> None:
    """Print the tables (per network, over seeds, the difference, the KS tests) and write them."""
    from .compare import ks_overview, per_network_table, tables
    from .plots import choose_panels, save_selectivity_outputs
    from .stats import format_table

    t = tables(measured, cfg.alpha)
    level, labels = 1.0 - cfg.alpha, list(measured.results)
    print(
        "\nEach network: top-1 accuracy on the analysed images, mean class selectivity per layer:"
    )
    print(format_table(per_network_table(t.summary)))
    for line in measured.at_chance:
        print(f"[{PROG}] warning: {line}")
    several = max(len(runs) for runs in measured.results.values()) > 1
    if several:  # (one network per model: the table above says it all)
        print(f"\nEach model over its networks (seeds): mean, std and {level:.0%} interval:")
        print(format_table(t.seeds))
    if t.difference is not None:
        print(f"\n{labels[1]} minus {labels[0]} over seeds (Welch {level:.0%} interval):")
        print(format_table(t.difference))
        if min(len(runs) for runs in measured.results.values()) == 1:
            print(
                "Note: a model with one network has no spread over seeds, so no interval: the "
                "difference of two networks says nothing about the models (give each model "
                "several seeds, e.g. an experiment directory)"
            )
    panels, notes = choose_panels(t.frame, cfg.plot_layers, t.ks)
    if t.ks is not None:
        one = len(t.ks[["run_a", "run_b"]].drop_duplicates()) == 1
        print(
            f"\nKolmogorov-Smirnov test per layer within {'one pair' if one else 'each pair'} "
            f"of networks (alpha={cfg.alpha}); its samples are one network's channels, so it "
            "compares these networks, not the models:"
        )
        print(format_table(t.ks if one else ks_overview(t.ks)))
        mean_d = t.ks.groupby("layer", observed=True, sort=False)["ks_statistic"].mean()
        print(
            f"\nMost separated layer (largest KS statistic{'' if one else ', mean over pairs'}): "
            f"{mean_d.idxmax()} (D = {mean_d.max():.3f})"
        )
    for note in notes:
        print(f"Note: {note}")
    paths = save_selectivity_outputs(
        t.frame, t.summary, cfg.output_dir, stem=cfg.stem, ks=t.ks, title=cfg.title,
        layers=panels, width=cfg.width, inputs=inputs, seeds=t.seeds, difference=t.difference,
    )  # fmt: skip
    print(f"Figure panels: {', '.join(panels)}")
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    if cfg.wandb_project:
        logged = {"summary": t.summary, "seeds": t.seeds, "difference": t.difference, "ks": t.ks}
        provenance: dict[str, dict[str, Any]] = {}
        for net in networks:
            provenance.setdefault(net.label, {})[net.run] = net.provenance()
        _log_wandb(cfg, paths, logged, provenance)


def _inputs(cfg: Namespace, specs: list[ModelSpec]) -> list[str]:
    """Every file the command reads: no output may be one of them."""
    from .loading import sources_of

    files = [str(c) for c in cfg.get("config") or []]
    for spec in specs:
        files += [str(f) for f in sources_of(spec)]
    return files


def _init_settings(cfg: Namespace) -> dict[str, Any]:
    return cfg.data.init_args.as_dict() if cfg.data is not None else {}


def _data_module(cfg: Namespace, explicit: Namespace, model_a) -> Any:
    """The data module: the user's, completed by the names model_a's run records."""
    from .run_data import build_data_module

    given = explicit.get("data")
    given_args = given.get("init_args").as_dict() if given and given.get("init_args") else {}
    return build_data_module(
        cfg.data.class_path if cfg.data is not None else None,
        given_args,
        model_a.data if model_a is not None else None,
        model_a.source if model_a is not None else "",
        note=lambda line: print(f"[{PROG}] note: {line}"),
    )


def _note_inputs(data, networks) -> None:
    """A note for every input a network is fed otherwise than it was trained with (one line
    per difference, naming the networks it concerns)."""
    from .run_data import fed_differences

    found: dict[str, list[str]] = {}
    for net in networks:
        trained = net.data.inputs(net.source) if net.data is not None else {}
        for line in fed_differences(data, trained):
            found.setdefault(line, []).append(net.name)
    for line, names in found.items():
        print(f"[{PROG}] note: {', '.join(names)}: {line}")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"--device {name!r} is not a valid device (e.g. auto, cpu, cuda:0)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r} requested but CUDA is not available")
    return device


def _check_classes(label: str, net, num_classes: int | None) -> None:
    """Warn when the classifier was trained for another label set (hidden units still work)."""
    head = getattr(net, "fc", None)
    out_features = getattr(head, "out_features", None)
    if num_classes is not None and out_features is not None and out_features != num_classes:
        warnings.warn(
            f"{label}: the model has {out_features} outputs but the data has {num_classes} "
            "classes; selectivity is computed for the data's classes",
            stacklevel=1,
        )


def _log_wandb(cfg: Namespace, paths, tables, provenance: dict[str, dict[str, Any]]) -> None:
    """One W&B run recording the compared checkpoints (``{model: {run: provenance}}``), the
    figure and the tables.

    Started by the same function as training's logger
    (:func:`reaf_lightning.training.wandb_logger.start_wandb_run`): no credentials or no network
    means an offline run, and an online start that fails goes offline. Its files go
    under ``output_dir``.
    """
    from reaf_lightning.training.wandb_logger import start_wandb_run

    if cfg.wandb_mode == "disabled":
        return
    run, mode = start_wandb_run(
        cfg.wandb_mode, project=cfg.wandb_project, name=cfg.stem, job_type="analysis",
        dir=cfg.output_dir,
        config={"models": provenance, "layers": cfg.layers, "reduction": cfg.reduction,
                "split": cfg.split, "data": _init_settings(cfg) or None},
    )  # fmt: skip
    import wandb

    try:
        payload = {f"{cfg.stem}/figure": wandb.Image(str(paths["png"]))}
        for name, table in tables.items():
            if table is not None:
                payload[f"{cfg.stem}/{name}"] = wandb.Table(dataframe=_plain(table))
        run.log(payload)
    finally:
        run.finish()
    if mode == "offline":
        where = Path(run.dir).parent
        print(f"W&B run saved offline under {where}; upload later with: wandb sync {where}")


def _plain(table):
    """Categoricals as strings: W&B tables want plain column types."""
    out = table.copy()
    for column in out.columns:
        if str(out[column].dtype) == "category":
            out[column] = out[column].astype(str)
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
