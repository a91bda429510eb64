"""Forward + backward time of every REAF strategy on every distinct REAF layer shape.

For REAF-ResNet50 (4-3-4, C=72), (8-4-70, C=88, C'=70) and (8-1-8, C=112) on
CIFAR input, each distinct (in, out, stride, input size) of the REAF convs is
timed with every strategy of the ``STRATEGIES`` table, and a dense
``nn.Conv2d`` of the same channels, interleaved,
median of ``--repeats``. Prints which strategy ``auto`` picks and its time
relative to the fastest (the target is <= 1.10 on every shape).

    python benchmarks/bench_reaf_conv.py [--batch 64] [--repeats 7] [--models '8-4-70*']
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_medians, machine_description  # noqa: E402

from reaf_lightning.layers import STRATEGIES, REAFConv2d  # noqa: E402
from reaf_lightning.models import create_model  # noqa: E402

MODELS = {
    "4-3-4 C=72": {"width": 72, "reaf": "4-3-4"},
    "8-4-70 C=88": {"width": 88, "out_width": 70, "reaf": "8-4-70"},
    "8-1-8 C=112": {"width": 112, "reaf": "8-1-8"},
}


def reaf_layer_shapes(
    kwargs: dict, image_size: int = 32, stem: str = "cifar"
) -> list[tuple[REAFConv2d, int]]:
    """Distinct REAF convs of a REAF-ResNet50 with the spatial size of their input."""
    model = create_model("reaf_resnet50", num_classes=100, stem=stem, **kwargs)
    sizes: dict[int, int] = {}

    def record(module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        sizes.setdefault(id(module), inputs[0].shape[-1])

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, REAFConv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for h in hooks:
        h.remove()
    seen, shapes = set(), []
    for m in model.modules():
        if isinstance(m, REAFConv2d):
            key = (m.in_channels, m.out_channels, m.stride, sizes[id(m)])
            if key not in seen:
                seen.add(key)
                shapes.append((m, sizes[id(m)]))
    return shapes


def time_shape(
    layer: REAFConv2d, size: int, batch: int, device: torch.device, repeats: int
) -> dict[str, float]:
    x = torch.randn(batch, layer.in_channels, size, size, device=device, requires_grad=True)
    variants: dict[str, nn.Module] = {}
    for impl in STRATEGIES:
        v = REAFConv2d(
            layer.in_channels, layer.out_channels, 3, *layer.spec, stride=layer.stride, impl=impl
        ).to(device)
        variants[impl] = v
    variants["dense"] = nn.Conv2d(
        layer.in_channels, layer.out_channels, 3, layer.stride, 1, bias=False
    ).to(device)

    def step(module: nn.Module):
        def run():
            module(x).sum().backward()

        return run

    return interleaved_medians({k: step(v) for k, v in variants.items()}, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="*", help=f"glob over {', '.join(MODELS)}")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"# bench_reaf_conv: {machine_description(device)}, batch {args.batch}, "
        f"median of {args.repeats} interleaved fwd+bwd"
    )
    print(
        "| model | REAF conv (in->out, stride, input) | "
        + " | ".join(f"{impl} ms" for impl in STRATEGIES)
        + " | dense ms | auto picks | auto / best |"
    )
    print("|---|---|" + "---|" * len(STRATEGIES) + "---|---|---|")
    worst = 0.0
    for name, kwargs in MODELS.items():
        if not fnmatch.fnmatch(name, args.models):
            continue
        for layer, size in reaf_layer_shapes(kwargs):
            t = time_shape(layer, size, args.batch, device, args.repeats)
            probe = torch.randn(
                args.batch, layer.in_channels, size, size, device=device, requires_grad=True
            )
            auto = layer.to(device).resolved_impl(probe)  # autotunes (cached per signature)
            best = min(t[k] for k in STRATEGIES)
            ratio = t[auto] / best
            worst = max(worst, ratio)
            ms = {k: f"{v * 1e3:.1f}" for k, v in t.items()}
            print(
                f"| {name} | {layer.in_channels}->{layer.out_channels}, s{layer.stride}, "
                f"{size}x{size} | "
                + " | ".join(ms[impl] for impl in STRATEGIES)
                + f" | {ms['dense']} | {auto} | {ratio:.2f} |",
                flush=True,
            )
    print(f"\nworst auto / best: {worst:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
