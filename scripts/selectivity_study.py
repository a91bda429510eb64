"""The documented selectivity study: REAF-ResNet18 against its FLOPs-matched ResNet18, over seeds.

Not the paper's experiment (ImageNet, ResNet50/101; §IV-E): a study a 2-core CPU
finishes, on scikit-learn's digits. For seeds ``0 .. N-1`` it trains the quick
start's two networks (``configs/quickstart.yaml``: REAF-ResNet18 4-3-4;
``configs/quickstart_baseline.yaml``: plain ResNet18 at width 14, matched in MACs),
with the selectivity callback after every epoch
(``configs/callbacks/selectivity_small.yaml``), each seed its own run directory
``<root>/<network>/seed<N>``. Then ``reaf-report`` over ``<root>`` and
``reaf-analysis`` of the two experiment directories (each model over its seeds: per
network, over seeds, the difference and its interval), and copies the analysis figure
to ``--figure`` (the docs show ``docs/images/selectivity_study.png``).

Every step is the documented command, run as its own process. A finished run is never
trained again, and an interrupted one continues from its ``last.ckpt``, so the script
picks up where it stopped. ``<output_dir>`` gets ``report.md`` (``reaf-report``'s
tables), ``analysis.txt`` (``reaf-analysis``'s), the analysis files (stem ``study``),
``by_epoch.csv`` (the callback's mean SI per layer after each epoch, mean and std over
the seeds) and ``timing.json``.

    python scripts/selectivity_study.py                  # 10 seeds, 4 epochs (5 min, 2 idle cores)
    python scripts/selectivity_study.py --seeds 2 --epochs 1 --train_batches 2  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from reaf_lightning.io import atomic_outputs, ensure_writable
from reaf_lightning.runs.layout import SELECTIVITY, RunDir, run_dir_for_seed
from reaf_lightning.runs.record import RecordError, read_record

#: The two networks: their name in ``<root>`` and label, and the configs that train them.
NETWORKS = {
    "quickstart_baseline": ("ResNet18", ["configs/quickstart.yaml",
                                         "configs/quickstart_baseline.yaml"]),
    "quickstart": ("REAF-ResNet18", ["configs/quickstart.yaml"]),
}  # fmt: skip
CALLBACK = "configs/callbacks/selectivity_small.yaml"
REPO = Path(__file__).resolve().parents[1]


def command(name: str) -> list[str]:
    """The package's console script ``name``, from the running interpreter's environment."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed in this environment (pip install -e .)")
    return [found]


def run(args: list[str], log: Path | None = None) -> str:
    """Run one command; its output goes to ``log`` (and is returned), a failure stops the study."""
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"failed ({result.returncode}): {' '.join(args)}\n" + "\n".join(tail))
    return result.stdout


def state(run_dir: Path) -> str:
    """``finished``, ``started`` (a run to continue) or ``new``."""
    if RunDir(run_dir).metrics.is_file():
        try:
            if read_record(RunDir(run_dir).metrics).finished:
                return "finished"
        except RecordError:
            pass
    return "started" if RunDir(run_dir).last_checkpoint.is_file() else "new"


def train(options: argparse.Namespace) -> dict[str, float]:
    """Every network and seed not finished yet; the seconds each fit took."""
    times = {}
    for seed in range(options.seeds):
        for name, (_, configs) in NETWORKS.items():
            root = Path(options.root) / name
            run_dir = run_dir_for_seed(root, seed)
            status = state(run_dir)
            if status == "finished":
                print(f"{run_dir}: finished, kept")
                continue
            args = [*command("reaf-lightning"), "fit"]
            for config in [*configs, CALLBACK]:
                args += ["--config", config]
            args += ["--seed_everything", str(seed), "--trainer.default_root_dir", str(root),
                     "--trainer.max_epochs", str(options.epochs)]  # fmt: skip
            if options.train_batches is not None:
                args += ["--trainer.limit_train_batches", str(options.train_batches)]
            if options.val_batches is not None:
                args += ["--trainer.limit_val_batches", str(options.val_batches)]
            if not options.wandb:
                args += ["--trainer.logger", "false"]
            if status == "started":
                args += ["--ckpt_path", "last"]
            start = time.perf_counter()
            run(args, Path(options.output_dir) / "fit_logs" / f"{name}_seed{seed}.log")
            times[f"{name}/seed{seed}"] = time.perf_counter() - start
            print(f"{run_dir}: trained in {times[f'{name}/seed{seed}']:.0f} s")
    return times


def by_epoch(root: Path) -> pd.DataFrame:
    """The callback's record: per network, layer and epoch the mean SI of its channels; then
    per model, layer and epoch the mean and std over the seeds."""
    rows = []
    for name, (label, _) in NETWORKS.items():
        for csv in sorted((root / name).glob("seed*/" + SELECTIVITY)):
            values = pd.read_csv(csv)
            means = values.groupby(["epoch", "layer"], sort=False)["si"].mean().reset_index()
            rows.append(means.assign(model=label, run=csv.parent.name))
    table = pd.concat(rows).groupby(["model", "layer", "epoch"], sort=False)["si"]
    return table.agg(seeds="size", mean="mean", std="std").reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="Seeds 0 .. N-1 (default 10).")
    parser.add_argument(
        "--epochs", type=int, default=4, help="Epochs per fit (the quick start's 4)."
    )
    parser.add_argument("--train_batches", type=int, default=None, help="Limit (smoke runs).")
    parser.add_argument("--val_batches", type=int, default=None, help="Limit (smoke runs).")
    parser.add_argument("--root", default="logs/study", help="Where the runs go.")
    parser.add_argument("--output_dir", default="outputs/study", help="Report and analysis.")
    parser.add_argument("--figure", default="docs/images/selectivity_study.png",
                        help="Where the analysis figure is copied (the docs' figure).")  # fmt: skip
    parser.add_argument("--wandb", action="store_true", help="Keep the W&B logger (offline).")
    options = parser.parse_args(argv)
    if options.seeds < 2:
        parser.error("--seeds must be at least 2: one seed has no spread to compare")
    for name in ("root", "output_dir", "figure"):  # relative to the repository, as the configs
        setattr(options, name, str(REPO / getattr(options, name)))
    out = ensure_writable(options.output_dir)

    start = time.perf_counter()
    fits = train(options)
    trained = time.perf_counter()
    report = run([*command("reaf-report"), "--log_roots", f"[{options.root}]"], out / "report.md")
    (label_a, _), (label_b, _) = NETWORKS.values()
    a, b = (str(Path(options.root) / name) for name in NETWORKS)
    analysis = run(
        [*command("reaf-analysis"), "--model_a.checkpoint", a, "--model_a.label", label_a,
         "--model_b.checkpoint", b, "--model_b.label", label_b, "--output_dir", str(out),
         "--stem", "study", "--progress", "false"],
        out / "analysis.txt",
    )  # fmt: skip
    epochs = by_epoch(Path(options.root))
    epochs.to_csv(out / "by_epoch.csv", index=False, float_format="%.6g")
    done = time.perf_counter()
    with atomic_outputs([options.figure], inputs=[out / "study.png"]) as (figure,):
        shutil.copyfile(out / "study.png", figure)
    earlier = out / "timing.json"  # the fits of earlier invocations (a resumed study) count
    fits = {**(json.loads(earlier.read_text())["fits_s"] if earlier.is_file() else {}), **fits}
    timing = {"fits_s": fits, "training_s": sum(fits.values()),
              "report_and_analysis_s": done - trained, "seeds": options.seeds,
              "epochs": options.epochs}  # fmt: skip
    with atomic_outputs([earlier]) as (file,):
        file.write_text(json.dumps(timing, indent=1) + "\n")
    print(report)
    print(analysis)
    print("Mean class selectivity after each epoch (the callback), mean over the seeds:")
    pivot = epochs.pivot_table(index=["layer", "model"], columns="epoch", values="mean", sort=False)
    print(pivot.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"Training {trained - start:.0f} s now ({timing['training_s']:.0f} s for all "
          f"{len(fits)} fits), report and analysis {done - trained:.0f} s; "
          f"figure: {options.figure}")  # fmt: skip


if __name__ == "__main__":
    main()
