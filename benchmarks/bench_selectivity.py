"""Benchmark of the class-selectivity pass (paper §IV-E, Figures 2-4).

Three questions, each answered against a baseline measured in the same run:

1. Throughput: images/s of :func:`reaf_lightning.analysis.selectivity.compute_selectivity`
   versus plain inference (``model(x)`` under ``no_grad``) on the same model
   and the same pre-collated batches. The two are interleaved (plain,
   selectivity, plain, ...) so drifts of a shared machine hit both, and the
   median over repeats is reported. Target: ratio >= 0.9.
2. Memory: peak memory of the selectivity pass over 1x and 4x the number of
   images, which must be flat because the accumulation is streaming. On CUDA
   this is ``torch.cuda.max_memory_allocated``; on CPU each size runs in a
   fresh subprocess that reports its peak RSS growth during the pass (the data
   set synthesises images on the fly, so it does not grow with N either).
3. Callback cost: wall time of ``Trainer.validate`` with
   :class:`reaf_lightning.analysis.training_callback.SelectivityCallback` (all batches, the paper's
   five layers) versus the same validation epoch without it, interleaved,
   median over repeats. The callback adds hooks and ``index_add_`` to the
   validation forward passes, no extra pass.

Usage::

    python benchmarks/bench_selectivity.py                       # resnet18, CIFAR size
    python benchmarks/bench_selectivity.py --model resnet50 --stem imagenet \\
        --image-size 224 --num-images 2048 --batch-size 128 --device cuda
    python benchmarks/bench_selectivity.py --smoke                # seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reaf_lightning.analysis.hooks import compute_selectivity  # noqa: E402
from reaf_lightning.models import create_model  # noqa: E402


class SyntheticImages(Dataset):
    """Deterministic random images made on demand: memory independent of its length."""

    def __init__(self, length: int, image_size: int, num_classes: int) -> None:
        self.length, self.image_size, self.num_classes = length, image_size, num_classes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(index)
        image = torch.randn(3, self.image_size, self.image_size, generator=g)
        return image, index % self.num_classes


def build_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    kwargs = {"num_classes": args.num_classes}
    if args.stem:
        kwargs["stem"] = args.stem
    torch.manual_seed(0)
    return create_model(args.model, **kwargs).to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_inference(model: nn.Module, batches: list, device: torch.device) -> None:
    with torch.no_grad():
        for x, _ in batches:
            model(x.to(device, non_blocking=True))
    _sync(device)


def throughput(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Interleaved repeats of plain inference and the selectivity pass; medians."""
    model = build_model(args, device)
    data = SyntheticImages(args.num_images, args.image_size, args.num_classes)
    batches = list(DataLoader(data, batch_size=args.batch_size))  # pre-collated: no loader cost
    plain_inference(model, batches[:2], device)  # warm-up (cudnn autotune, allocator)
    compute_selectivity(model, batches[:2], num_classes=args.num_classes, device=device)
    times: dict[str, list[float]] = {"plain": [], "selectivity": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        plain_inference(model, batches, device)
        times["plain"].append(time.perf_counter() - start)
        start = time.perf_counter()
        compute_selectivity(model, batches, num_classes=args.num_classes, device=device)
        times["selectivity"].append(time.perf_counter() - start)  # ends with .cpu(): synced
    plain = args.num_images / statistics.median(times["plain"])
    sel = args.num_images / statistics.median(times["selectivity"])
    return {"plain_img_s": plain, "selectivity_img_s": sel, "ratio": sel / plain}


def callback_cost(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Interleaved ``Trainer.validate`` with and without the callback; median seconds."""
    import lightning.pytorch as pl

    from reaf_lightning.analysis.training_callback import SelectivityCallback
    from reaf_lightning.training.module import ImageClassifier

    arch_kwargs = {"stem": args.stem} if args.stem else {}
    torch.manual_seed(0)
    module = ImageClassifier(arch=args.model, num_classes=args.num_classes, arch_kwargs=arch_kwargs)
    data = SyntheticImages(args.num_images, args.image_size, args.num_classes)
    images, labels = zip(*(data[i] for i in range(len(data))))  # materialised once
    tensors = TensorDataset(torch.stack(images), torch.tensor(labels))
    loader = DataLoader(tensors, batch_size=args.batch_size)

    def validate(with_callback: bool, root: str) -> float:
        callbacks = [SelectivityCallback()] if with_callback else []
        trainer = pl.Trainer(
            accelerator=device.type, devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
            default_root_dir=root,
        )  # fmt: skip
        start = time.perf_counter()
        trainer.validate(module, dataloaders=loader, verbose=False)
        _sync(device)
        return time.perf_counter() - start

    import tempfile

    with tempfile.TemporaryDirectory() as root:
        validate(True, root)  # warm-up
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for with_callback in (False, True):
                times[with_callback].append(validate(with_callback, root))
    plain, with_cb = statistics.median(times[False]), statistics.median(times[True])
    return {"validate_s": plain, "validate_callback_s": with_cb, "callback_ratio": with_cb / plain}


def peak_memory_cuda(args: argparse.Namespace, device: torch.device, num_images: int) -> int:
    model = build_model(args, device)
    data = SyntheticImages(num_images, args.image_size, args.num_classes)
    loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers)
    plain_inference(model, list(DataLoader(data, batch_size=args.batch_size))[:1], device)
    torch.cuda.reset_peak_memory_stats(device)
    compute_selectivity(model, loader, num_classes=args.num_classes, device=device)
    return int(torch.cuda.max_memory_allocated(device))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_memory_cpu_child(args: argparse.Namespace, num_images: int) -> int:
    """Runs in a fresh process: peak RSS growth (bytes) during the selectivity pass."""
    device = torch.device("cpu")
    model = build_model(args, device)
    data = SyntheticImages(num_images, args.image_size, args.num_classes)
    loader = DataLoader(data, batch_size=args.batch_size)
    # Warm up with one full pass over two batches so allocator caches exist already.
    compute_selectivity(model, [data_batch for _, data_batch in zip(range(2), loader)],
                        num_classes=args.num_classes)  # fmt: skip
    before = _rss_bytes()
    compute_selectivity(model, loader, num_classes=args.num_classes)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return max(0, peak - before)


def peak_memory_cpu(args: argparse.Namespace, num_images: int) -> int:
    cmd = [sys.executable, __file__, "--_memory-child", str(num_images), *args.passthrough]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18", help="registry name")
    p.add_argument("--stem", default="cifar", help="'cifar', 'imagenet' or '' for the default")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--num-images", type=int, default=512, help="images per throughput repeat")
    p.add_argument("--memory-images", type=int, default=256, help="the 1x size of the memory test")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--smoke", action="store_true", help="tiny model and sizes (seconds)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--_memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.stem, args.image_size, args.num_classes = "test_resnet", "", 16, 10
        args.num_images, args.memory_images, args.batch_size, args.repeats = 64, 64, 16, 2
    # Settings a CPU memory child must share with its parent.
    args.passthrough = [
        "--model", args.model, "--stem", args.stem, "--image-size", str(args.image_size),
        "--num-classes", str(args.num_classes), "--batch-size", str(args.batch_size),
        "--threads", str(args.threads), "--device", "cpu",
    ]  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_child is not None:
        print(peak_memory_cpu_child(args, args._memory_child))
        return {}
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"model={args.model} stem={args.stem or 'default'} image={args.image_size} "
          f"batch={args.batch_size} device={name} threads={torch.get_num_threads()}")  # fmt: skip

    speed = throughput(args, device)
    print(f"throughput over {args.num_images} images, median of {args.repeats} interleaved:")
    print(f"  plain inference      {speed['plain_img_s']:10.1f} images/s")
    print(f"  compute_selectivity  {speed['selectivity_img_s']:10.1f} images/s")
    print(f"  ratio selectivity / plain = {speed['ratio']:.3f}  (target >= 0.9)")

    cost = callback_cost(args, device)
    print(f"validation epoch over {args.num_images} images, median of {args.repeats} interleaved:")
    print(f"  Trainer.validate                       {cost['validate_s']:8.3f} s")
    print(f"  Trainer.validate + SelectivityCallback {cost['validate_callback_s']:8.3f} s")
    print(f"  ratio with / without callback = {cost['callback_ratio']:.3f}")

    sizes = [args.memory_images, 4 * args.memory_images]
    if device.type == "cuda":
        peaks = [peak_memory_cuda(args, device, n) for n in sizes]
        kind = "torch.cuda.max_memory_allocated"
    else:
        peaks = [peak_memory_cpu(args, n) for n in sizes]
        kind = "peak RSS growth during the pass (fresh subprocess)"
    ratio = peaks[1] / peaks[0] if peaks[0] else float("nan")
    print(f"memory ({kind}):")
    for n, peak in zip(sizes, peaks, strict=True):
        print(f"  {n:7d} images  {peak / 2**20:10.2f} MiB")
    print(f"  ratio 4x / 1x = {ratio:.3f}  (target: flat, ~1.0)")

    result = {
        "model": args.model, "device": name, "batch_size": args.batch_size,
        "image_size": args.image_size, **speed, **cost,
        "memory_images": sizes, "peak_memory_bytes": peaks, "memory_ratio": ratio,
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
