"""The REAF convolution on a CUDA GPU: every strategy against the reference, auto, compile.

Run with ``pytest -m cuda`` on a machine with a GPU (skipped elsewhere). Shapes are
every distinct REAF layer of REAF-ResNet50 4-3-4 (C=72) and 8-4-70 (C=88, C'=70) at
CIFAR resolution; ``benchmarks/gpu_check.py`` runs the same checks plus the speed
measurements and writes them to files.
"""

from __future__ import annotations

import copy

import pytest
import torch

from reaf_lightning.layers import REAFConv2d, parse_reaf, reaf_conv2d, resolve_auto_impl
from reaf_lightning.models import create_model


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 convolutions would need bf16-like tolerances for fp32; restore the setting after."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

IMPLS = ("masked", "gather", "decompose", "decompose_loop", "loop")
MODELS = {
    "4-3-4": {"width": 72, "out_width": 72, "reaf": "4-3-4"},
    "8-4-70": {"width": 88, "out_width": 70, "reaf": "8-4-70"},
}


def _layer_shapes(width: int, out_width: int) -> list[tuple[int, int, int, int]]:
    """(in, out, stride, input size) of every distinct REAF conv of the CIFAR REAF-ResNet50:
    stage ``s`` has ``2^s`` times the base widths at ``32 / 2^s`` pixels, and its first
    block (``s > 0``) strides 2 on the previous stage's resolution (torchvision's ResNet)."""
    shapes = [(width, out_width, 1, 32)]
    for s in (1, 2, 3):
        c_in, c_out = width << s, out_width << s
        shapes += [(c_in, c_out, 2, 32 >> (s - 1)), (c_in, c_out, 1, 32 >> s)]
    return shapes


SHAPES = [
    (name, *shape)
    for name, kw in MODELS.items()
    for shape in _layer_shapes(kw["width"], kw["out_width"])
]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("amp", ["fp32", "bf16"])
@pytest.mark.parametrize("name,c_in,c_out,stride,size", SHAPES)
def test_strategies_equal_reference_on_cuda(name, c_in, c_out, stride, size, amp, channels_last):
    """Output, input gradient and weight gradient of every strategy vs Eq. 5-6 in float64."""
    torch.manual_seed(0)
    spec = parse_reaf(MODELS[name]["reaf"])
    layer = REAFConv2d(c_in, c_out, 3, *spec, stride=stride).cuda()
    x = torch.randn(4, c_in, size, size, device="cuda")
    x64, w64 = x.double().requires_grad_(), layer.weight.detach().double().requires_grad_()
    ref = reaf_conv2d(x64, w64, None, layer.spec, stride, 1)
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x64, w64), grad_out)
    tol = 1e-4 if amp == "fp32" else 3e-2  # bf16 keeps 8 bits of mantissa
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for impl in IMPLS:
        xi = x.contiguous(memory_format=memory_format).requires_grad_()
        weight = layer.weight.detach().requires_grad_()
        with torch.autocast("cuda", torch.bfloat16, enabled=amp == "bf16"):
            y = layer.compute(impl, xi, weight, None)
        grads = torch.autograd.grad(y, (xi, weight), grad_out.to(y.dtype))
        assert _rel_err(y, ref) <= tol, impl
        for got, want, what in zip(grads, ref_grads, ("dL/dx", "dL/dW")):
            assert got.dtype == torch.float32, (impl, what)
            assert _rel_err(got, want) <= tol, (impl, what)


def test_auto_under_deterministic_mode_is_rule_and_repeatable():
    torch.manual_seed(0)
    model = create_model("reaf_resnet50", num_classes=100, stem="cifar", **MODELS["4-3-4"]).cuda()
    x = torch.randn(16, 3, 32, 32, device="cuda")
    torch.use_deterministic_algorithms(True)  # the conftest fixture restores the mode
    layers = [m for m in model.modules() if isinstance(m, REAFConv2d)]
    picked = {m.resolved_impl(torch.empty(16, m.in_channels, 8, 8, device="cuda")) for m in layers}
    assert picked == {resolve_auto_impl(layers[0].spec, "cuda")}
    grads = []
    for _ in range(2):
        model.zero_grad()
        model(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.equal(grads[0], grads[1])


def test_inductor_compile_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = create_model("reaf_resnet50", num_classes=100, stem="cifar", **MODELS["4-3-4"]).cuda()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y_c, y_e = compiled(x), eager(x)
    assert _rel_err(y_c, y_e.double()) <= 1e-3
    y_c.square().mean().backward()
    y_e.square().mean().backward()
    for (n, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        assert _rel_err(q.grad, p.grad.double()) <= 1e-2, n
    torch._dynamo.reset()
