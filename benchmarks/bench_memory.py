"""Peak training-step memory of REAF-ResNet50 (4-3-4, C=72) per strategy vs ResNet50.

Each configuration runs in a fresh subprocess so allocator caches cannot leak
between them. The reported number is the memory a training step adds on top of
the model, optimizer state and input: on CUDA ``max_memory_allocated`` minus the
allocation before the step; on CPU the growth of the process's peak resident set
(``ru_maxrss``) over its resident set before the step (first step, so the
allocator has nothing cached yet).

    python benchmarks/bench_memory.py [--batch 32] [--device cpu]

Target: REAF (auto) <= 1.10x ResNet50. ``gather`` stores a G_M-times copy of each
REAF conv's input for backward; ``masked`` stores one dense weight per conv
(both avoided by the recomputing autograd functions); ``decompose`` keeps only the
input and compact weight, but builds a transient G_M-times copy of the output.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

CONFIGS = {
    "resnet50": ("resnet50", {}),
    "reaf 4-3-4 auto": ("reaf_resnet50", {"width": 72, "reaf": "4-3-4", "impl": "auto"}),
    "reaf 4-3-4 masked": ("reaf_resnet50", {"width": 72, "reaf": "4-3-4", "impl": "masked"}),
    "reaf 4-3-4 gather": ("reaf_resnet50", {"width": 72, "reaf": "4-3-4", "impl": "gather"}),
    "reaf 4-3-4 decompose": ("reaf_resnet50", {"width": 72, "reaf": "4-3-4", "impl": "decompose"}),
    "reaf 4-3-4 decompose_loop": (
        "reaf_resnet50",
        {"width": 72, "reaf": "4-3-4", "impl": "decompose_loop"},
    ),
    "reaf 4-3-4 loop": ("reaf_resnet50", {"width": 72, "reaf": "4-3-4", "impl": "loop"}),
    "reaf 8-1-8 auto": ("reaf_resnet50", {"width": 112, "reaf": "8-1-8", "impl": "auto"}),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _build(name: str, kwargs: dict, batch: int, device_name: str):
    import torch

    from reaf_lightning.models import create_model

    device = torch.device(device_name)
    model = create_model(name, num_classes=100, stem="cifar", **kwargs).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    return model, x, y


def tuned_impls(name: str, kwargs: dict, batch: int, device_name: str) -> list[str]:
    """The strategy ``impl="auto"`` picks for each REAF conv, in module order."""
    from torch import nn

    from reaf_lightning.layers import REAFConv2d

    model, x, y = _build(name, kwargs, batch, device_name)
    picked = []
    hooks = [
        m.register_forward_pre_hook(lambda m, i: picked.append(m.resolved_impl(i[0])))
        for m in model.modules()
        if isinstance(m, REAFConv2d)
    ]
    nn.functional.cross_entropy(model(x), y)
    for h in hooks:
        h.remove()
    return picked


def measure(
    name: str, kwargs: dict, batch: int, device_name: str, impls: list[str] | None = None
) -> int:
    """Bytes a single training step adds at its peak (runs in the current process).

    ``impls`` fixes each REAF conv's strategy (what ``auto`` chose in another
    process), so the autotuning's own scratch allocations are not counted.
    """
    import torch
    from torch import nn

    from reaf_lightning.layers import REAFConv2d

    model, x, y = _build(name, kwargs, batch, device_name)
    if impls is not None:
        for module, impl in zip(
            [m for m in model.modules() if isinstance(m, REAFConv2d)], impls, strict=True
        ):
            module.impl = impl
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _rss_bytes()
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def _child(*args: str) -> object:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per config")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tune", help=argparse.SUPPRESS)
    parser.add_argument("--impls", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tune:
        name, kwargs = CONFIGS[args.tune]
        print(json.dumps(tuned_impls(name, kwargs, args.batch, args.device)))
        return
    if args.child:
        name, kwargs = CONFIGS[args.child]
        impls = json.loads(args.impls) if args.impls else None
        print(json.dumps(measure(name, kwargs, args.batch, args.device, impls)))
        return
    import torch

    print(
        f"# bench_memory: device {args.device}, batch {args.batch}, CIFAR input, torch "
        f"{torch.__version__}; peak memory added by one training step "
        f"(median of {args.repeats} fresh processes)"
    )
    print("| model | strategies | peak step memory (MiB) | ratio to ResNet50 |")
    print("|---|---|---|---|")
    base = None
    common = ["--batch", str(args.batch), "--device", args.device]
    for label, (_, kwargs) in CONFIGS.items():
        extra, picked = [], kwargs.get("impl", "-")
        if kwargs.get("impl") == "auto":
            impls = _child("--tune", label, *common)
            extra = ["--impls", json.dumps(impls)]
            picked = ", ".join(f"{impls.count(i)}x {i}" for i in sorted(set(impls)))
        # CPU peak RSS varies by a few percent between identical processes: median of several.
        peak = statistics.median(
            _child("--child", label, *common, *extra) for _ in range(args.repeats)
        )
        base = base or peak
        print(f"| {label} | {picked} | {peak / 2**20:.0f} | {peak / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
