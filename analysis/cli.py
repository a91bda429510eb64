"""``reaf-analysis``: class selectivity of one or two models (paper Figures 2-4).

Example (Figure 2; ``configs/analysis/figure2.yaml`` holds the full setting)::

    reaf-analysis --config configs/analysis/figure2.yaml \\
        --model_b.checkpoint logs/reaf_resnet50/checkpoints/last.ckpt

    reaf-analysis --model_a.arch resnet50 --model_a.weights IMAGENET1K_V1 \\
        --model_b.arch resnext50_32x4d --model_b.weights IMAGENET1K_V1 \\
        --data.class_path reaf_lightning.data.ImageNetDataModule \\
        --data.init_args.root /data/imagenet --output_dir outputs/figure4

The command loads every model first (so a bad checkpoint fails before any
compute), streams the data module's validation split through each model
(:func:`analysis.selectivity.compute_selectivity`), prints the per-layer
summary and, for two models, a KS test per layer, and writes the figure
(PNG, PDF), the raw SI values and the tables to ``output_dir`` atomically.
Errors are one line on stderr with exit status 1 (configuration parse errors:
status 2, as argparse); set ``REAF_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Literal

import torch
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser
from lightning.pytorch import LightningDataModule

from .loading import ModelLoadError, ModelSpec, load_model
from .plots import save_selectivity_outputs
from .selectivity import DEFAULT_LAYERS, compute_selectivity
from .stats import format_table, ks_tests, selectivity_frame, summarize

__all__ = ["build_parser", "main"]


class AnalysisError(Exception):
    """A user-facing failure of the command (one line, no traceback)."""


def build_parser() -> ArgumentParser:
    """The command's parser: ``--config`` YAML files and flags compose (later wins)."""
    parser = ArgumentParser(
        prog="reaf-analysis",
        description="Class selectivity histograms of one or two models (REAF paper, Figs. 2-4).",
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s).")
    parser.add_argument("--model_a", type=ModelSpec, required=True, help="First model.")
    parser.add_argument(
        "--model_b", type=ModelSpec | None, default=None, help="Optional second model."
    )
    parser.add_subclass_arguments(
        LightningDataModule,
        "data",
        required=True,
        help="Data module; its validation split is used.",
    )
    parser.add_argument(
        "--split", type=Literal["val", "test"], default="val", help="Which dataloader to use."
    )
    parser.add_argument(
        "--layers", type=list[str], default=list(DEFAULT_LAYERS), help="Modules to analyse."
    )
    parser.add_argument(
        "--reduction",
        type=Literal["mean", "none"],
        default="mean",
        help="'mean': one unit per channel (paper); 'none': every (c, h, w) unit.",
    )
    parser.add_argument("--output_dir", type=str, default="outputs/selectivity")
    parser.add_argument("--stem", type=str, default="selectivity", help="Output file prefix.")
    parser.add_argument("--title", type=str | None, default=None, help="Figure title.")
    parser.add_argument(
        "--device", type=str, default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda:0'."
    )
    parser.add_argument(
        "--max_batches", type=int | None, default=None, help="Stop after N batches (smoke runs)."
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="Significance of the KS test.")
    parser.add_argument("--progress", type=bool, default=True, help="tqdm bar over batches.")
    parser.add_argument(
        "--wandb_project",
        type=str | None,
        default=None,
        help="Start a W&B run in this project and log figure + tables (WANDB_MODE applies).",
    )
    return parser


def main(args: list[str] | None = None) -> None:
    """Entry point of ``reaf-analysis``; ``args`` defaults to ``sys.argv[1:]``."""
    parser = build_parser()
    debug = os.environ.get("REAF_DEBUG") == "1"
    parser.exit_on_error = debug  # else jsonargparse prints its whole usage before the error
    try:
        cfg = parser.parse_args(args)
    except ArgumentError as err:
        from reaf_lightning.cli_errors import format_parse_error

        keys = [a.dest for a in parser._actions]
        configs = _config_files(sys.argv[1:] if args is None else [str(a) for a in args])
        print(
            f"reaf-analysis: error: {format_parse_error(str(err), keys, configs)}", file=sys.stderr
        )
        raise SystemExit(2) from None
    try:
        _run(parser, cfg)
    except (AnalysisError, ModelLoadError, ValueError, FileNotFoundError) as err:
        if debug:
            raise
        from reaf_lightning.cli_errors import unwrap

        err = unwrap(err)  # a data module's own message, not jsonargparse's wrapper
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"reaf-analysis: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def _config_files(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"] + [
        a.split("=", 1)[1] for a in argv if a.startswith("--config=")
    ]


def _run(parser: ArgumentParser, cfg) -> None:
    if cfg.max_batches is not None and cfg.max_batches < 1:
        raise AnalysisError(f"--max_batches must be >= 1, got {cfg.max_batches}")
    if not 0.0 < cfg.alpha < 1.0:
        raise AnalysisError(f"--alpha must be in (0, 1), got {cfg.alpha}")
    init = (
        parser.instantiate(cfg)
        if hasattr(parser, "instantiate")
        else parser.instantiate_classes(cfg)
    )
    data: LightningDataModule = init.data
    specs = [s for s in (init.model_a, init.model_b) if s is not None]
    labels = [s.display_name() for s in specs]
    if len(set(labels)) != len(labels):
        raise AnalysisError(f"both models are labelled {labels[0]!r}; set model_b.label")
    device = _device(cfg.device)
    num_classes = getattr(data, "num_classes", None)

    # Load everything before computing anything: a bad checkpoint fails fast.
    models = [load_model(spec, num_classes=num_classes) for spec in specs]
    for label, model in zip(labels, models, strict=True):
        _check_classes(label, model, num_classes)

    data.prepare_data()
    data.setup("validate" if cfg.split == "val" else "test")
    loader = data.val_dataloader() if cfg.split == "val" else data.test_dataloader()

    results = {}
    for label, model in zip(labels, models, strict=True):
        print(f"[reaf-analysis] {label}: class selectivity on {type(data).__name__}/{cfg.split}")
        results[label] = compute_selectivity(
            model,
            loader,
            layers=cfg.layers,
            num_classes=num_classes,
            reduction=cfg.reduction,
            device=device,
            max_batches=cfg.max_batches,
            progress=cfg.progress,
        )
        model.cpu()

    frame = selectivity_frame(results)
    summary = summarize(frame)
    ks = ks_tests(frame, alpha=cfg.alpha) if len(results) == 2 else None
    print("\nClass selectivity summary (per layer and model):")
    print(format_table(summary))
    if ks is not None:
        print(f"\nTwo-sample Kolmogorov-Smirnov test per layer (alpha={cfg.alpha}):")
        print(format_table(ks))

    run = _start_wandb(cfg) if cfg.wandb_project else None
    try:
        paths = save_selectivity_outputs(
            frame, summary, cfg.output_dir, stem=cfg.stem, ks=ks, title=cfg.title
        )
    finally:
        if run is not None:
            run.finish()
    print("\nWrote " + ", ".join(str(p) for p in paths.values()))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AnalysisError(
            f"--device {name!r} is not a valid device (e.g. auto, cpu, cuda:0)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnalysisError(f"--device {name!r} requested but CUDA is not available")
    return device


def _check_classes(label: str, model: torch.nn.Module, num_classes: int | None) -> None:
    """Warn when the classifier was trained for another label set (hidden units still work)."""
    head = getattr(model, "fc", None)
    if num_classes is None or not isinstance(head, torch.nn.Linear):
        return
    if head.out_features != num_classes:
        warnings.warn(
            f"{label}: the model has {head.out_features} outputs but the data has {num_classes} "
            "classes; selectivity is computed for the data's classes",
            stacklevel=2,
        )


def _start_wandb(cfg):
    import wandb

    name = cfg.stem if cfg.title is None else cfg.title
    return wandb.init(
        project=cfg.wandb_project,
        name=name,
        job_type="analysis",
        config={"layers": cfg.layers, "reduction": cfg.reduction, "split": cfg.split},
    )


if __name__ == "__main__":  # pragma: no cover
    main()
