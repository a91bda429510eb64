"""Training-step time of Table 3 REAF-ResNet50s as a ratio to plain ResNet50.

One step = forward + cross-entropy + backward + SGD(momentum, weight decay) step,
on CIFAR-sized input. Each REAF model is timed in interleaved pairs with the
baseline (baseline, model, baseline, model, ...); the reported ratio is the
median of the per-pair ratios, so background load cancels out.

    python benchmarks/bench_train_step.py            # 4-3-4 and 8-1-8, CPU, batch 32 (~4 min)
    python benchmarks/bench_train_step.py --rows '*' --impls auto,masked  # all Table 3 rows
    python benchmarks/bench_train_step.py --device cuda --batch 256 --amp bf16 --channels-last

Targets (ours, from the MAC ratios): <= 1.10 for G_M/G_I >= 1/2 (4-3-4 has 1.03x the MACs
of ResNet50), <= 1.25 for G_M = 1 (grouped convolutions run fewer MACs per second).
The load average is printed before and after: ratios taken under load drift upwards.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine_description, synchronize  # noqa: E402

from reaf_lightning.layers import parse_reaf  # noqa: E402
from reaf_lightning.models import create_model  # noqa: E402
from reaf_lightning.paper.tables import paper_rows  # noqa: E402


def make_step(
    model: nn.Module,
    batch: int,
    size: int,
    device: torch.device,
    amp: str | None,
    channels_last: bool,
) -> Callable[[], None]:
    """A closure running one full training step on fixed random data."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 100, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    def step() -> None:
        autocast = (
            torch.autocast(device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def paired_ratio(
    baseline: Callable[[], None],
    candidate: Callable[[], None],
    device: torch.device,
    pairs: int,
    warmup: int = 1,
) -> tuple[float, float, float]:
    """(median candidate/baseline ratio, median baseline s, median candidate s)."""
    for _ in range(warmup):  # also runs impl="auto" timing, outside the measurement
        baseline()
        candidate()
    base_times, cand_times = [], []
    for _ in range(pairs):
        for fn, times in ((baseline, base_times), (candidate, cand_times)):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    ratios = [c / b for b, c in zip(base_times, cand_times)]
    return statistics.median(ratios), statistics.median(base_times), statistics.median(cand_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", default="*_4-3-4,*_8-1-8", help="comma-separated globs over Table 3 row ids"
    )
    parser.add_argument("--impls", default="auto", help="comma-separated REAF strategies")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="input resolution")
    parser.add_argument("--stem", default="cifar", choices=("cifar", "imagenet"))
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    impls = args.impls.split(",")
    print(
        f"# bench_train_step: {machine_description(device)}; batch {args.batch}, "
        f"{args.size}x{args.size}, amp={args.amp}, channels_last={args.channels_last}; "
        f"median of {args.pairs} interleaved (ResNet50, REAF) pairs; load average "
        f"{_load()}"
    )
    print(
        "| row | G_M/G_I | "
        + " | ".join(f"{i} ratio" for i in impls)
        + " | ResNet50 ms | REAF (auto) ms | target |"
    )
    print("|---|---|" + "---|" * len(impls) + "---|---|---|")

    torch.manual_seed(0)
    common = {"num_classes": 100, "stem": args.stem}
    baseline = make_step(
        create_model("resnet50", **common),
        args.batch,
        args.size,
        device,
        args.amp,
        args.channels_last,
    )
    summary = []
    for row in paper_rows("table3"):
        if row.baseline or not any(fnmatch.fnmatch(row.id, g) for g in args.rows.split(",")):
            continue
        spec = parse_reaf(row.kwargs["reaf"])
        target = 1.10 if spec.g_m / spec.g_i >= 0.5 else 1.25 if spec.g_m == 1 else None
        cells, base_ms, model_ms = [], float("nan"), float("nan")
        for impl in impls:
            model = create_model(row.model, impl=impl, **common, **row.kwargs)
            step = make_step(model, args.batch, args.size, device, args.amp, args.channels_last)
            ratio, base_s, model_s = paired_ratio(baseline, step, device, args.pairs)
            cells.append(f"{ratio:.2f}")
            if impl == impls[0]:
                base_ms, model_ms = base_s * 1e3, model_s * 1e3
            del model, step
        print(
            f"| {row.id} | {spec.g_m}/{spec.g_i} | "
            + " | ".join(cells)
            + f" | {base_ms:.0f} | {model_ms:.0f} | {target or '-'} |",
            flush=True,
        )
        if target is not None:
            verdict = "meets" if float(cells[0]) <= target else "MISSES"
            summary.append(f"{spec} ({impls[0]}): {cells[0]}x ResNet50, {verdict} <= {target}")
    print(f"\n# load average after: {_load()}")
    for line in summary:
        print(f"RATIO {line}")


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
