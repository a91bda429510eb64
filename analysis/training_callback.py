"""Class selectivity during training: a Lightning callback (paper §IV-E, measured per epoch).

The paper compares the selectivity of trained networks only; watching it
evolve during training is ours. The callback hooks the network while the
validation loop runs, so it costs no extra forward pass: every ``N`` epochs it
sums the hooked layers' outputs per class over (the first ``max_batches``
batches of) the validation set, computes the index per channel
(:mod:`reaf_lightning.analysis.selectivity`), logs per-layer mean and median (every logger),
W&B histograms (W&B loggers), and appends the values to ``selectivity.csv``
in the run directory (``trainer.default_root_dir``).

Under DDP each process sums its shard, the sums are all-reduced and the
``DistributedSampler``'s padding samples are not counted, so the result is the
single-process one (:mod:`reaf_lightning.analysis.streaming`).

Turn it on for any paper row by adding a config file::

    reaf-lightning fit --config configs/recipes/cifar100.yaml \\
        --config configs/table3/reaf_resnet50_c72_72_4-3-4.yaml \\
        --config configs/callbacks/selectivity.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from reaf_lightning.errors import ConfigError, DataError, NumericalError
from reaf_lightning.io import atomic_outputs, check_outputs, ensure_writable, read_bounded
from reaf_lightning.runs.layout import SELECTIVITY
from reaf_lightning.runs.writer import claim_for

from .hooks import DEFAULT_LAYERS, LayerCapture, raise_on_negative, split_batch
from .nonnegative import check_measurable_layers
from .streaming import ClassSums, ShardPadding, distributed_sampler

__all__ = ["SelectivityCallback"]

CSV_COLUMNS = ("epoch", "step", "layer", "unit", "si")
#: Largest ``selectivity.csv`` read back (ours: 200 epochs x 5 layers x 2048 channels is ~80 MB).
MAX_CSV_BYTES = 1 << 30


class SelectivityCallback(Callback):
    """Per-layer class selectivity index on the validation set every ``every_n_epochs`` epochs.

    Args:
        every_n_epochs: Compute after epochs ``N-1, 2N-1, ...`` (as Lightning's
            ``check_val_every_n_epoch``); every ``validate`` run computes it.
        layers: Module names of the network (``pl_module.net`` when the module
            has one, else the module itself); default the paper's five.
        max_batches: Use only the first batches of each validation epoch
            (per process); ``None`` = all.
        reduction: ``"mean"`` (one unit per channel, the paper) or ``"none"``.
        filename: CSV in ``trainer.default_root_dir`` (columns ``epoch, step,
            layer, unit, si``; rows of a recomputed epoch are replaced). One already
            there (a resumed run's) is read and checked at set-up, before anything is
            written, and listed in the run record before it is rewritten.
        log_histograms: Log one W&B histogram per layer to every W&B logger.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        layers: list[str] | None = None,
        max_batches: int | None = None,
        reduction: Literal["mean", "none"] = "mean",
        filename: str = SELECTIVITY,
        log_histograms: bool = True,
    ) -> None:
        if every_n_epochs < 1:
            raise ConfigError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if max_batches is not None and max_batches < 1:
            raise ConfigError(f"max_batches must be >= 1 or null, got {max_batches}")
        if Path(filename).name != filename or not filename.endswith(".csv"):
            raise ConfigError(
                f"filename must be a plain file name ending in .csv, got {filename!r}"
            )
        self.every_n_epochs = every_n_epochs
        self.layers = list(DEFAULT_LAYERS if layers is None else layers)
        self.max_batches = max_batches
        self.reduction = reduction
        self.filename = filename
        self.log_histograms = log_histograms
        self._capture: LayerCapture | None = None
        self._sums: ClassSums | None = None
        self._padding: ShardPadding | None = None
        self._batches = 0
        self._checked = False
        self._earlier: Any = None  # the rows already in the CSV (a pandas DataFrame) or None

    # ------------------------------------------------------------------ schedule

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @staticmethod
    def _network(pl_module: pl.LightningModule) -> nn.Module:
        net = getattr(pl_module, "net", None)
        return net if isinstance(net, nn.Module) else pl_module

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Fail at set-up, not after N epochs: unknown or empty layer names, a layer that runs
        twice per forward pass or whose output can be negative, an unwritable run dir, a CSV
        path that is a link or not a file, an earlier CSV that is not one of ours; and
        warn when the fit is shorter than ``every_n_epochs`` (it would record nothing).

        The last two need one forward pass of two blank images of the data module's
        ``image_size``; without one (a data module that does not say its image size)
        they are checked on the first validation batch instead.
        """
        LayerCapture(self._network(pl_module), self.layers, self.reduction)
        epochs = trainer.max_epochs
        if stage == "fit" and epochs is not None and 0 < epochs < self.every_n_epochs:
            rank_zero_warn(
                f"SelectivityCallback measures after every {self.every_n_epochs} epochs, but this "
                f"fit trains {epochs}: it will record nothing; set every_n_epochs (for small "
                "networks on a CPU, configs/callbacks/selectivity_small.yaml measures every epoch)"
            )
        self._checked = False
        size = getattr(trainer.datamodule, "image_size", None)
        if isinstance(size, int) and size > 0:
            self._check_layers(pl_module, torch.zeros(2, 3, size, size))
        if trainer.is_global_zero:
            ensure_writable(trainer.default_root_dir, what="run directory")
            path = self.csv_path(trainer)
            check_outputs([path])
            self._earlier = _read_csv(path) if path.exists() else None

    def _check_layers(self, pl_module: pl.LightningModule, example: torch.Tensor) -> None:
        net = self._network(pl_module)
        device = next((t.device for t in net.parameters()), torch.device("cpu"))
        check_measurable_layers(net, self.layers, example.to(device))
        self._checked = True

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._checked or self._capture is None:
            return
        images, _ = split_batch(batch)
        self._capture.__exit__()  # the check's forward pass must not count
        try:
            self._check_layers(pl_module, images[:2])
        finally:
            self._capture.__enter__()

    # ------------------------------------------------------------------ accumulation

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer):
            return
        self._capture = LayerCapture(self._network(pl_module), self.layers, self.reduction)
        self._capture.__enter__()
        loaders = trainer.val_dataloaders
        first = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        self._padding = ShardPadding(distributed_sampler(first))
        self._sums = ClassSums(self.layers, None, self.reduction, pl_module.device)
        self._batches = 0

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._capture is None or self._sums is None or self._padding is None:
            return
        done = self.max_batches is not None and self._batches >= self.max_batches
        if done or dataloader_idx != 0:  # hooks removed, or not the first validation set
            self._capture.outputs.clear()
            return
        features = self._capture.take()
        _, labels = split_batch(batch)
        real = self._padding.real(int(labels.shape[0]))
        if real > 0:
            self._sums.add({n: t[:real] for n, t in features.items()}, labels[:real])
        self._batches += 1
        if self.max_batches is not None and self._batches >= self.max_batches:
            self._capture.__exit__()  # later batches run without hooks

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._capture is None or self._sums is None:
            return
        self._capture.__exit__()
        sums, self._capture, self._sums = self._sums, None, None
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            sums.all_reduce()
        stats = sums.result()
        if int(stats.counts.sum()) == 0 or int((stats.counts > 0).sum()) < 2:
            return  # nothing (or a single class) seen: the index is undefined
        bad = stats.non_finite_layers()
        if bad:
            raise NumericalError(
                f"non-finite activations (NaN or inf) in layer {bad[0]!r} at epoch "
                f"{trainer.current_epoch}; class selectivity is undefined"
            )
        raise_on_negative(stats)
        selectivity = {layer: si.float().cpu() for layer, si in stats.selectivity().items()}
        for layer, si in selectivity.items():
            # identical on every rank after the all-reduce: no further sync needed
            pl_module.log(f"selectivity/{layer}/mean", float(si.mean()))
            pl_module.log(f"selectivity/{layer}/median", float(si.median()))
        if trainer.is_global_zero:
            self._log_histograms(trainer, selectivity)
            self._write_csv(trainer, selectivity)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._capture is not None:
            self._capture.__exit__()
        self._capture = self._sums = None

    # ------------------------------------------------------------------ outputs

    def _log_histograms(self, trainer: pl.Trainer, selectivity: dict[str, torch.Tensor]) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not (self.log_histograms and wandb_loggers):
            return
        import wandb

        histograms = {
            f"selectivity/{layer}/histogram": wandb.Histogram(si.numpy(), num_bins=40)
            for layer, si in selectivity.items()
        }
        for logger in wandb_loggers:
            logger.log_metrics(histograms, step=trainer.global_step)

    def csv_path(self, trainer: pl.Trainer) -> Path:
        """Where the values go: ``<trainer.default_root_dir>/<filename>``."""
        return Path(trainer.default_root_dir) / self.filename

    def _write_csv(self, trainer: pl.Trainer, selectivity: dict[str, torch.Tensor]) -> None:
        import pandas as pd

        path = self.csv_path(trainer)
        claim_for(trainer, [path])
        rows = pd.concat(
            [
                pd.DataFrame(
                    {
                        "epoch": trainer.current_epoch,
                        "step": trainer.global_step,
                        "layer": layer,
                        "unit": range(len(si)),
                        "si": si.double().numpy(),
                    }
                )
                for layer, si in selectivity.items()
            ]
        )
        old = self._earlier  # a resumed run keeps earlier epochs; a redone epoch is replaced
        if old is not None:
            rows = pd.concat([old[old["epoch"] != trainer.current_epoch], rows])
        with atomic_outputs([path]) as (tmp,):
            rows.to_csv(tmp, index=False, columns=list(CSV_COLUMNS), float_format="%.8g")
        self._earlier = rows


def _read_csv(path: Path) -> Any:
    """The rows of an earlier ``selectivity.csv``, or one line saying why it is not one."""
    import io

    import pandas as pd

    raw = read_bounded(path, MAX_CSV_BYTES, "selectivity table", error=DataError)
    why = None
    try:
        rows = pd.read_csv(io.BytesIO(raw), dtype={"layer": str})
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        rows, why = None, str(err).strip().splitlines()[0][:200] if str(err).strip() else "empty"
    if rows is not None and list(rows.columns) != list(CSV_COLUMNS):
        why = f"its columns are {list(rows.columns)[:8]}, not {list(CSV_COLUMNS)}"
    elif rows is not None and len(rows):
        numeric = ["epoch", "step", "unit"]
        if not all(pd.api.types.is_integer_dtype(rows[c]) for c in numeric):
            why = "epoch, step and unit are not all whole numbers"
        elif not pd.api.types.is_numeric_dtype(rows["si"]):
            why = "si is not a number everywhere"
    if why is not None:
        raise DataError(
            f"{path} is not a selectivity table of SelectivityCallback ({why}); it is left as "
            "it is: move it away, or train into another --trainer.default_root_dir"
        )
    return rows
