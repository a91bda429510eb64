"""One GPU session: REAF correctness, training-step speed, auto's per-layer winners, data.

Sized to finish within about 8 minutes on one GPU; everything it finds goes to
``--out`` as ``gpu_check.json`` (all numbers) and ``gpu_check.md`` (tables for
BENCHMARKS.md), written section by section, so a run cut short keeps what it did.

    python benchmarks/gpu_check.py --out gpu_results                   # on a CUDA machine
    python benchmarks/gpu_check.py --out /tmp/dry --device cpu --quick  # dry run, tiny sizes

Sections:

a. correctness of every strategy against the reference forward (``loop``, Eq. 5-6, run
   in float64): output, input and weight gradients, fp32 and bf16 autocast, contiguous
   and channels_last, on every distinct REAF layer shape of REAF-ResNet50 4-3-4 (C=72)
   and 8-4-70 (C=88, C'=70); ``auto`` under deterministic mode (bitwise repeatable, the
   fixed rule); ``torch.compile`` of REAF-ResNet50 4-3-4 against eager.
b. training step (forward, loss, backward, SGD) of REAF-ResNet50 4-3-4, 8-4-70 and 8-1-8
   against ResNet50, interleaved, AMP bf16 + channels_last: CIFAR 32x32 batch 256 and
   ImageNet 224x224 batch 64; images/s, ratio, and the share of the step in REAF convs.
c. the strategy ``auto`` picks on every REAF layer shape, its time against every
   strategy and against the fixed fallback rule (which decides the CUDA rule).
d. on-device CIFAR augmentation (``gpu_augment``) against the DataLoader, images/s, and the share
   of a CIFAR training step (batch 256, 4-3-4) that loading would take.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before init

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_medians, machine_description  # noqa: E402
from bench_reaf_conv import reaf_layer_shapes  # noqa: E402
from bench_train_step import make_step, paired_ratio  # noqa: E402

from reaf_lightning.layers import REAFConv2d, autotune_cache, reaf_conv2d  # noqa: E402
from reaf_lightning.layers.autotune import candidates, resolve_auto_impl  # noqa: E402
from reaf_lightning.models import create_model  # noqa: E402

STRATEGIES = ("masked", "gather", "decompose", "decompose_loop", "loop")
MODELS = {
    "4-3-4 C=72": {"width": 72, "out_width": 72, "reaf": "4-3-4"},
    "8-4-70 C=88 C'=70": {"width": 88, "out_width": 70, "reaf": "8-4-70"},
    "8-1-8 C=112": {"width": 112, "out_width": 112, "reaf": "8-1-8"},
}


class Report:
    """Collects results; rewrites the JSON and markdown files after every section."""

    def __init__(self, out: Path, header: dict) -> None:
        self.out, self.data, self.lines = out, {"machine": header}, []
        out.mkdir(parents=True, exist_ok=True)

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        self.lines += [f"\n### {title}\n", "| " + " | ".join(columns) + " |"]
        self.lines.append("|" + "---|" * len(columns))
        self.lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        print("\n".join(self.lines[-len(rows) - 3 :]), flush=True)

    def save(self, key: str, value: object) -> None:
        self.data[key] = value
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))
        header = f"# gpu_check: {self.data['machine']['device']}\n"
        (self.out / "gpu_check.md").write_text(header + "\n".join(self.lines) + "\n")


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max abs difference over max abs reference: a scale-free error."""
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def check_strategies(device: torch.device, quick: bool, report: Report) -> bool:
    rows, records, ok = [], [], True
    batch = 2 if quick else 8
    for model_name, kwargs in MODELS.items():
        if model_name.startswith("8-1-8"):
            continue
        shapes = reaf_layer_shapes(kwargs)[: 2 if quick else None]
        for layer, size in shapes:
            size = min(size, 8) if quick else size
            layer = copy.deepcopy(layer).to(device)
            x = torch.randn(batch, layer.in_channels, size, size, device=device)
            x64, w64 = x.double().requires_grad_(), layer.weight.detach().double().requires_grad_()
            ref = reaf_conv2d(x64, w64, None, layer.spec, layer.stride, layer.padding)
            grad_out = torch.randn_like(ref)
            ref_gx, ref_gw = torch.autograd.grad(ref, (x64, w64), grad_out)
            for amp in ("fp32", "bf16"):
                tol = 1e-4 if amp == "fp32" else 3e-2  # bf16 keeps 8 bits of mantissa
                for fmt in ("contiguous", "channels_last"):
                    memory_format = getattr(torch, f"{fmt}_format" if fmt == "contiguous" else fmt)
                    xi = x.contiguous(memory_format=memory_format).requires_grad_()
                    weight = layer.weight.detach().requires_grad_()
                    errs = {}
                    for impl in STRATEGIES:
                        with torch.autocast(device.type, torch.bfloat16, enabled=amp == "bf16"):
                            y = layer.compute(impl, xi, weight, None)
                        gx, gw = torch.autograd.grad(y, (xi, weight), grad_out.to(y.dtype))
                        errs[impl] = max(
                            _rel_err(y, ref), _rel_err(gx, ref_gx), _rel_err(gw, ref_gw)
                        )
                    ok &= max(errs.values()) <= tol
                    shape = (
                        f"{layer.in_channels}->{layer.out_channels} s{layer.stride} {size}x{size}"
                    )
                    records.append({"model": model_name, "layer": shape, "amp": amp, "format": fmt,
                                    "rel_err": errs})  # fmt: skip
                    rows.append([model_name, shape, amp, fmt, *(f"{e:.1e}" for e in errs.values()),
                                 "ok" if max(errs.values()) <= tol else "FAIL"])  # fmt: skip
    report.table(
        "a. every strategy vs the float64 reference: max relative error of y, dL/dx, dL/dW",
        ["model", "layer", "amp", "format", *STRATEGIES, "within tol"],
        rows,
    )
    report.save("strategies", records)
    return ok


def check_auto_deterministic(device: torch.device, quick: bool, report: Report) -> bool:
    """Deterministic mode: the fixed rule, and two identical steps give identical bits."""
    torch.manual_seed(0)
    name, kwargs = ("test_reaf_resnet", {}) if quick else ("reaf_resnet50", MODELS["4-3-4 C=72"])
    model = create_model(name, num_classes=100, stem="cifar", **kwargs).to(device)
    x = torch.randn(4 if quick else 32, 3, 32, 32, device=device)
    torch.use_deterministic_algorithms(True)
    try:
        picked = {m.resolved_impl(x.new_empty(1, m.in_channels, 8, 8)) for m in _reaf_convs(model)}
        grads = []
        for _ in range(2):
            model.zero_grad()
            model(x).square().mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    finally:
        torch.use_deterministic_algorithms(False)
    rule = resolve_auto_impl(next(iter(_reaf_convs(model))).spec, device.type)
    ok = torch.equal(grads[0], grads[1]) and picked == {rule}
    result = {"picked": sorted(picked), "rule": rule, "bitwise_equal": torch.equal(*grads)}
    report.table(
        "a. auto under deterministic mode",
        ["picked", "rule", "bitwise repeat", "ok"],
        [[result["picked"], rule, result["bitwise_equal"], ok]],
    )
    report.save("auto_deterministic", result)
    return ok


def check_compile(device: torch.device, quick: bool, report: Report) -> bool:
    """torch.compile (inductor; aot_eager in a CPU dry run) of REAF-ResNet50 vs eager."""
    backend = "aot_eager" if quick and device.type == "cpu" else "inductor"
    torch._dynamo.reset()
    torch.manual_seed(0)
    name, kwargs = ("test_reaf_resnet", {}) if quick else ("reaf_resnet50", MODELS["4-3-4 C=72"])
    eager = create_model(name, num_classes=100, stem="cifar", **kwargs).to(device)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    x = torch.randn(4 if quick else 32, 3, 32, 32, device=device)
    start = time.perf_counter()
    y_c = compiled(x)
    y_c.square().mean().backward()
    seconds = time.perf_counter() - start
    y_e = eager(x)
    y_e.square().mean().backward()
    out_err = _rel_err(y_c, y_e.double())
    grad_err = max(
        _rel_err(q.grad, p.grad.double())
        for p, q in zip(eager.parameters(), compiled_model.parameters())
    )
    ok = out_err <= 1e-3 and grad_err <= 1e-2  # batch statistics amplify fp32 rounding
    result = {
        "backend": backend,
        "out_rel_err": out_err,
        "grad_rel_err": grad_err,
        "compile_s": seconds,
        "ok": ok,
    }
    report.table(
        "a. torch.compile vs eager (training mode)",
        list(result),
        [[f"{v:.1e}" if isinstance(v, float) else v for v in result.values()]],
    )
    report.save("compile", result)
    return ok


def training_speed(device: torch.device, quick: bool, report: Report) -> dict:
    settings = [("cifar", 32, 256), ("imagenet", 224, 64)]
    if quick:
        settings = [("cifar", 32, 4)]
    pairs = 2 if quick else 10
    rows, records = [], {}
    for stem, size, batch in settings:
        torch.manual_seed(0)
        amp = "bf16"
        base = make_step(
            create_model("resnet50", num_classes=100, stem=stem), batch, size, device, amp, True
        )
        for model_name, kwargs in list(MODELS.items())[: 1 if quick else None]:
            model = create_model("reaf_resnet50", num_classes=100, stem=stem, **kwargs)
            step = make_step(model, batch, size, device, amp, True)
            ratio, base_s, reaf_s = paired_ratio(base, step, device, pairs, warmup=2)
            share = _reaf_conv_share(model, step, device)
            key = f"{stem} {model_name}"
            records[key] = {
                "batch": batch,
                "size": size,
                "ratio": ratio,
                "resnet50_s": base_s,
                "reaf_s": reaf_s,
                "reaf_conv_share": share,
            }
            rows.append(
                [
                    stem,
                    size,
                    batch,
                    model_name,
                    f"{batch / base_s:,.1f}",
                    f"{batch / reaf_s:,.1f}",
                    f"{ratio:.2f}",
                    f"{share:.0%}",
                ]
            )
    report.table(
        "b. training step, AMP bf16 + channels_last (target 4-3-4 <= 1.10)",
        [
            "stem",
            "size",
            "batch",
            "REAF-ResNet50",
            "ResNet50 img/s",
            "REAF img/s",
            "ratio",
            "REAF convs' share of step",
        ],
        rows,
    )
    report.save("train_step", records)
    return records


def _reaf_convs(model: nn.Module) -> list[REAFConv2d]:
    return [m for m in model.modules() if isinstance(m, REAFConv2d)]


def _reaf_conv_share(model: nn.Module, step, device: torch.device) -> float:
    """Share of one step's time in REAF convs: their forward ranges plus the backward nodes of
    the layers' autograd function (``layers/dispatch.py``), profiled."""
    activity = torch.profiler.ProfilerActivity
    activities = [activity.CUDA] if device.type == "cuda" else [activity.CPU]
    ranges: dict[int, torch.profiler.record_function] = {}

    def enter(module: nn.Module, _inputs: tuple) -> None:
        ranges[id(module)] = torch.profiler.record_function("REAF conv forward").__enter__()

    def leave(module: nn.Module, _inputs: tuple, _output: torch.Tensor) -> None:
        ranges.pop(id(module)).__exit__(None, None, None)

    hooks = [
        h
        for m in _reaf_convs(model)
        for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))
    ]
    with torch.profiler.profile(activities=activities) as prof:
        step()
    for h in hooks:
        h.remove()
    total_attr, self_attr = (
        ("device_time_total", "self_device_time_total")
        if device.type == "cuda"
        else ("cpu_time_total", "self_cpu_time_total")
    )
    events = prof.key_averages()
    total = sum(getattr(e, self_attr) for e in events)
    ours = ("REAF conv forward", "REAFConvFunctionBackward")
    reaf = sum(getattr(e, total_attr) for e in events if e.key.endswith(ours))
    return reaf / max(total, 1e-9)


def auto_winners(device: torch.device, quick: bool, report: Report) -> list[dict]:
    """Per REAF layer shape: every strategy's fwd+bwd time, auto's pick, the rule's cost."""
    settings = [("cifar", 32, 256), ("imagenet", 224, 64)] if not quick else [("cifar", 8, 2)]
    rows, records = [], []
    for stem, image, batch in settings:
        for model_name, kwargs in MODELS.items():
            for layer, size in reaf_layer_shapes(kwargs, image, stem)[: 2 if quick else None]:
                layer = copy.deepcopy(layer).to(device, memory_format=torch.channels_last)
                x = torch.randn(batch, layer.in_channels, size, size, device=device)
                x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
                names = candidates(layer)

                def run(impl: str, layer=layer, x=x):
                    with torch.autocast(device.type, torch.bfloat16):
                        y = layer.compute(impl, x, layer.weight, None)
                    y.float().sum().backward()

                times = interleaved_medians(
                    {i: (lambda i=i: run(i)) for i in names}, device, 2 if quick else 5, 1
                )
                autotune_cache().clear()
                with torch.autocast(device.type, torch.bfloat16):
                    picked = layer.resolved_impl(x)
                best = min(times, key=times.get)
                rule = resolve_auto_impl(layer.spec, device.type)
                shape = f"{layer.in_channels}->{layer.out_channels} s{layer.stride} {size}x{size}"
                rule_over_best = times.get(rule, float("nan")) / times[best]
                records.append({"stem": stem, "model": model_name, "layer": shape, "best": best,
                                "ms": {k: v * 1e3 for k, v in times.items()}, "auto": picked,
                                "rule": rule, "rule_over_best": rule_over_best})  # fmt: skip
                ms = [f"{times[i] * 1e3:.2f}" if i in times else "-" for i in STRATEGIES]
                rows.append([stem, model_name, shape, *ms, best, picked, rule,
                             f"{rule_over_best:.2f}"])  # fmt: skip
    report.table(
        "c. per-layer fwd+bwd ms (bf16 autocast, channels_last), auto's pick, fallback rule",
        ["stem", "model", "layer", *STRATEGIES, "best", "auto", "rule", "rule / best"],
        rows,
    )
    report.save("auto_winners", records)
    return records


def data_loader(device: torch.device, quick: bool, report: Report, step_s: float | None) -> None:
    """Device-resident CIFAR loader vs DataLoader (``bench_cifar_loader.py``'s measurement)."""
    from bench_cifar_loader import main as loader_benchmark

    batch = 256
    argv = ["--device", str(device), "--batch-size", str(batch), "--seconds", "1" if quick else "3"]
    argv += ["--n-images", "2000" if quick else "20000"]
    results = loader_benchmark(argv)
    row = [f"{results['dataloader']:,.0f}", f"{results['device']:,.0f}"]
    shares = {}
    for name, ips in results.items():  # time to load one batch, over one training step
        shares[name] = None if step_s is None else (batch / ips) / step_s
        row.append("-" if step_s is None else f"{shares[name]:.1%}")
    report.table(
        "d. CIFAR loading, batch 256: images/s, and loading time over one 4-3-4 training step",
        ["DataLoader img/s", "device loader img/s", "DataLoader / step", "device / step"],
        [row],
    )
    report.save("data", {"images_per_s": results, "share_of_step": shares, "step_s": step_s})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the result files")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run")
    parser.add_argument("--sections", default="abcd", help="subset of a, b, c, d to run")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: error: --device cuda but no CUDA device; use --device cpu")
    torch.backends.cudnn.benchmark = True  # as a GPU training run would
    report = Report(
        args.out,
        {"device": machine_description(device), "quick": args.quick, "torch": torch.__version__},
    )
    start, ok = time.perf_counter(), True
    step_s = None
    if "a" in args.sections:
        ok &= check_strategies(device, args.quick, report)
        ok &= check_auto_deterministic(device, args.quick, report)
        ok &= check_compile(device, args.quick, report)
    if "b" in args.sections:
        speed = training_speed(device, args.quick, report)
        step_s = speed[next(iter(speed))]["reaf_s"]
    if "c" in args.sections:
        auto_winners(device, args.quick, report)
    if "d" in args.sections:
        data_loader(device, args.quick, report, step_s)
    report.save("summary", {"correct": ok, "seconds": time.perf_counter() - start})
    print(f"\ngpu_check: correctness {'ok' if ok else 'FAILED'}; results in {args.out}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
