"""CPU inference time of REAF-ResNet50 4-3-4 (C = 72) as a ratio to ResNet50, eager and exported.

One call = one ``no_grad`` forward of a batch of ImageNet-sized images in eval mode.
"Exported" is the module ``torch.export.export`` returns (the graph the exported
file holds, run by PyTorch). All four candidates (two networks x eager/exported)
are timed round-robin (``_timing.interleaved_medians``), so background load hits
them alike; the ratio divides medians measured in the same run.

    python benchmarks/bench_inference.py                       # batch 1 and 64, 224 px
    python benchmarks/bench_inference.py --batches 1 --repeats 11

The REAF convs use ``impl="auto"`` (each layer times its strategies once per input
shape, during the warm-up; the exported graph keeps the strategy chosen when it
was traced). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_medians, machine_description  # noqa: E402

from reaf_lightning.models import create_model  # noqa: E402

NETWORKS = {
    "resnet50": {"stem": "imagenet"},
    "reaf_resnet50": {"stem": "imagenet", "reaf": "4-3-4", "width": 72},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per candidate")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per candidate")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    print(f"# {machine_description(device)}; load average before {os.getloadavg()}")
    print("| batch | network | eager ms | exported ms | eager / ResNet50 eager "
          "| exported / ResNet50 exported |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, 3, args.size, args.size)
        candidates = {}
        for name, kwargs in NETWORKS.items():
            net = create_model(name, num_classes=1000, **kwargs).eval()
            with torch.no_grad():
                net(x)  # let impl="auto" choose each layer's strategy before tracing
                exported = torch.export.export(net, (x,)).module()
            candidates[(name, "eager")] = _call(net, x)
            candidates[(name, "exported")] = _call(exported, x)
        times = interleaved_medians(candidates, device, args.repeats, args.warmup)
        for name in NETWORKS:
            eager, exported = times[(name, "eager")], times[(name, "exported")]
            print(
                f"| {batch} | {name} | {eager * 1e3:.1f} | {exported * 1e3:.1f} | "
                f"{eager / times[('resnet50', 'eager')]:.3f} | "
                f"{exported / times[('resnet50', 'exported')]:.3f} |",
                flush=True,
            )
    print(f"# load average after {os.getloadavg()}")


def _call(net: torch.nn.Module, x: torch.Tensor):
    def run() -> None:
        with torch.no_grad():
            net(x)

    return run


if __name__ == "__main__":
    main()
