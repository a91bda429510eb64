"""``reaf-analysis``: class selectivity of one or two models (paper §IV-E, Figures 2-4).

Examples (``configs/analysis/figure*.yaml`` hold the paper's settings)::

    reaf-analysis --config configs/analysis/figure2.yaml --data.init_args.root /data/imagenet

    reaf-analysis --model_a.checkpoint logs/quickstart/checkpoints/last.ckpt \\
        --output_dir outputs/quickstart

The command checks that ``output_dir`` is writable and loads every model
first (a bad checkpoint or output directory fails before any compute), then
streams the validation split through each model, prints per-layer summaries,
a KS test per layer for two models and the layer that separates most, and
writes the figure (PNG, PDF), the raw values and the tables atomically.

Data settings: without ``--data`` the data module recorded by model_a's run
is rebuilt with the settings it was trained with; a recorded class is only
ever one of the package's own data modules (:mod:`.run_data`), never imported
by the name in a file. Settings given on the command line win, with a printed
note where they differ from the run's. Layers whose outputs can be negative
are refused (:mod:`.nonnegative`); outputs follow the package's output rules
(:mod:`reaf_lightning.io`), checked before anything is loaded.

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
from reaf_lightning.errors import ConfigError, NumericalError

from .run_data import INPUT_SETTINGS, differs
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
    add("--model_a", type=ModelSpec, required=True, help="First model.")
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
    add("--alpha", type=float, default=0.05, help="Significance level of the KS test.")
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

    check_outputs(list(output_paths(cfg.output_dir, cfg.stem, len(specs) == 2).values()), inputs)

    import torch

    from .hooks import compute_selectivity
    from .loading import load_model
    from .stats import format_table, ks_tests, selectivity_frame, summarize

    device = _device(cfg.device)
    # Load everything before computing anything: a bad checkpoint fails fast.
    first = load_model(specs[0], weights_only=cfg.weights_only)
    data = _data_module(cfg, explicit, first)
    num_classes = getattr(data, "num_classes", None)
    models = [first] + [
        load_model(s, num_classes=num_classes, weights_only=cfg.weights_only) for s in specs[1:]
    ]
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"both models are labelled {labels[0]!r}; set --model_b.label")
    for model in models:
        _check_classes(model.label, model.net, num_classes)
    used = {k: getattr(data, k) for k in INPUT_SETTINGS if hasattr(data, k)}
    for model in models[1:]:
        _warn_other_settings(model, used)

    data.prepare_data()
    data.setup("validate" if cfg.split == "val" else "test")
    loader = data.val_dataloader() if cfg.split == "val" else data.test_dataloader()
    results = {}
    for model in models:
        print(f"[{PROG}] {model.label}: class selectivity on {type(data).__name__}/{cfg.split}")
        try:
            results[model.label] = compute_selectivity(
                model.net, loader, layers=cfg.layers, num_classes=num_classes,
                reduction=cfg.reduction, device=device, max_batches=cfg.max_batches,
                progress=cfg.progress,
            )  # fmt: skip
        except NumericalError as err:
            raise NumericalError(f"model {model.label!r}: {err}") from err
        model.net.to(torch.device("cpu"))

    frame = selectivity_frame(results)
    summary = summarize(frame)
    ks = ks_tests(frame, alpha=cfg.alpha) if len(results) == 2 else None
    print("\nClass selectivity summary (per layer and model):")
    print(format_table(summary))
    _write(cfg, frame, summary, ks, {m.label: m.provenance() for m in models}, inputs)


def _inputs(cfg: Namespace, specs: list[ModelSpec]) -> list[str]:
    """Every file the command reads: no output may be one of them."""
    from .loading import checkpoint_of

    files = [str(c) for c in cfg.get("config") or []]
    for spec in specs:
        if spec.checkpoint:
            files.append(str(checkpoint_of(Path(spec.checkpoint))))
        if spec.state_dict:
            files.append(str(spec.state_dict))
    return files


def _write(
    cfg: Namespace, frame, summary, ks, provenance: dict[str, dict[str, Any]], inputs: list[str]
) -> None:
    from .plots import choose_panels, save_selectivity_outputs
    from .stats import format_table

    panels, notes = choose_panels(frame, cfg.plot_layers, ks)
    if ks is not None:
        print(f"\nTwo-sample Kolmogorov-Smirnov test per layer (alpha={cfg.alpha}):")
        print(format_table(ks))
        best = ks.loc[ks["ks_statistic"].idxmax()]
        print(
            f"\nMost separated layer (largest KS statistic): {best['layer']} "
            f"(D = {best['ks_statistic']:.3f}, p = {best['p_value']:.2g})"
        )
    for note in notes:
        print(f"Note: {note}")
    paths = save_selectivity_outputs(
        frame, summary, cfg.output_dir, stem=cfg.stem, ks=ks, title=cfg.title,
        layers=panels, width=cfg.width, inputs=inputs,
    )  # fmt: skip
    print(f"Figure panels: {', '.join(panels)}")
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    if cfg.wandb_project:
        _log_wandb(cfg, paths, summary, ks, provenance)


def _init_settings(cfg: Namespace) -> dict[str, Any]:
    return cfg.data.init_args.as_dict() if cfg.data is not None else {}


def _data_module(cfg: Namespace, explicit: Namespace, model_a) -> Any:
    """The data module: the user's, completed by model_a's run record (module docstring)."""
    from .run_data import build_data_module

    given = explicit.get("data")
    given_args = given.get("init_args").as_dict() if given and given.get("init_args") else {}
    return build_data_module(
        cfg.data.class_path if cfg.data is not None else None,
        given_args,
        _init_settings(cfg),
        model_a.data,
        model_a.source,
        note=lambda line: print(f"[{PROG}] note: {line}"),
    )


def _warn_other_settings(model, used: dict[str, Any]) -> None:
    """Warn when model_b was trained with other input settings than those used."""
    trained = model.data.init_args if model.data is not None else {}
    for key in INPUT_SETTINGS:
        if key in trained and key in used and differs(trained[key], used[key]):
            print(
                f"[{PROG}] note: {model.label} was trained with data {key}={trained[key]!r}, "
                f"but is evaluated with {used[key]!r}"
            )


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


def _log_wandb(cfg: Namespace, paths, summary, ks, provenance: dict[str, dict[str, Any]]) -> None:
    """One W&B run recording the compared checkpoints, the figure and the tables.

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
        payload = {
            f"{cfg.stem}/figure": wandb.Image(str(paths["png"])),
            f"{cfg.stem}/summary": wandb.Table(dataframe=_plain(summary)),
        }
        if ks is not None:
            payload[f"{cfg.stem}/ks"] = wandb.Table(dataframe=_plain(ks))
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
