"""Compile every registered model (fullgraph) and compare with eager, one line per model.

The unit tests compile one model per block family; this script covers every
registry name at its real depth (too slow for the test suite on 2 CPU cores).

    python benchmarks/check_compile_all.py [--backend aot_eager|inductor] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from reaf_lightning.models import create_model, list_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="aot_eager")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pattern", default="*")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"# check_compile_all: backend={args.backend}, device={device}, torch {torch.__version__}"
    )
    print("| model | fullgraph compile + eval forward | max diff / max abs output | seconds |")
    print("|---|---|---|---|")
    failures = 0
    for name in list_models(args.pattern):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, stem="cifar").to(device).eval()
        x = torch.randn(2, 3, 32, 32, device=device)
        start = time.perf_counter()
        try:
            compiled = torch.compile(copy.deepcopy(model), backend=args.backend, fullgraph=True)
            with torch.no_grad():
                reference = model(x)
                # Relative to the output's scale: random-init deep nets in eval mode
                # (running stats 0/1) produce logits in the hundreds, where fp32
                # reassociation by a compiler moves the last digits by ~1e-2 absolute.
                diff = ((compiled(x) - reference).abs().max() / reference.abs().max()).item()
            status = "ok" if diff < 1e-4 else "MISMATCH"
        except Exception as err:  # report every model, then fail at the end
            status, diff = (
                f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:80]}",
                float("nan"),
            )
        failures += status != "ok"
        print(f"| {name} | {status} | {diff:.2e} | {time.perf_counter() - start:.0f} |", flush=True)
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
