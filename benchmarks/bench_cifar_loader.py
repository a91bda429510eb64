"""Throughput of CIFAR-100 training batches: per-image CPU augmentation vs ``gpu_augment``.

Both paths deliver the same training batches (random crop 32 with padding 4,
horizontal flip, normalisation) *on the target device*: the DataLoader path
augments and normalises each image in worker processes and copies float
batches; ``gpu_augment=True`` has the loader gather uint8 images only and
augments whole batches on the device (``CIFAR100DataModule.augment_batch``,
what ``on_after_batch_transfer`` runs inside a Trainer).

Synthetic data in the real ``cifar-100-python`` format is written to a
temporary folder, so no download is needed. Each path runs for about
``--seconds`` after a warm-up batch; the script prints images/s for both and
the ratio.

    python benchmarks/bench_cifar_loader.py                 # cuda if available, else cpu
    python benchmarks/bench_cifar_loader.py --device cpu --seconds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from reaf_lightning.data import CIFAR100DataModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.fake_data import write_cifar100  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    loader: Iterable, on_device: Callable[[torch.Tensor], torch.Tensor], device, seconds: float
) -> tuple[float, int]:
    """Images per second over about ``seconds`` (after one warm-up batch), and images seen."""
    n_images = 0
    start = None
    while True:
        for x, y in loader:
            x = on_device(x.to(device, non_blocking=True))
            y = y.to(device, non_blocking=True)
            if start is None:  # warm-up: worker start-up, first transfer, kernel caches
                _sync(device)
                start = time.perf_counter()
                continue
            n_images += x.shape[0]
            if time.perf_counter() - start >= seconds:
                _sync(device)
                return n_images / (time.perf_counter() - start), n_images


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-images", type=int, default=10_000, help="synthetic training images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per path")
    args = p.parse_args(argv)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        write_cifar100(tmp, n_train=args.n_images, n_test=16)
        results = {}
        for name, gpu_augment in (("dataloader", False), ("device", True)):
            dm = CIFAR100DataModule(
                root=tmp,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                pin_memory=device.type == "cuda",
                gpu_augment=gpu_augment,
            )
            dm.setup("fit")
            on_device = dm.augment_batch if gpu_augment else (lambda x: x)
            ips, n = measure(dm.train_dataloader(), on_device, device, args.seconds)
            results[name] = ips
            print(f"{name:>10}: {ips:12,.0f} images/s  ({n} images, device={device})")
    print(f"     ratio: {results['device'] / results['dataloader']:.1f}x (device / dataloader)")
    return results


if __name__ == "__main__":
    main()
