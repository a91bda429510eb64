"""torch.compile and channels_last keep the numbers: same numbers as eager / contiguous.

Every block family is compiled with ``fullgraph=True`` (no graph breaks) through
the ``aot_eager`` backend, which runs Dynamo tracing and AOTAutograd exactly as
inductor does but skips C++ code generation (minutes on 2 cores); one model also
goes through inductor end to end. ``benchmarks/check_compile_all.py`` compiles
every registered model with inductor and is run for BENCHMARKS.md.
"""

from __future__ import annotations

import copy

import pytest
import torch

from reaf_lightning.models import create_model

FAMILIES = {
    "basic_plain": ("test_resnet", {}),
    "basic_reaf": ("reaf_resnet18", {"base_channels": 8, "width": 8, "reaf": "4-3-4"}),
    "bottleneck_reaf_masked": ("test_reaf_resnet", {"impl": "masked"}),
    "bottleneck_reaf_gather": ("test_reaf_resnet", {"impl": "gather"}),
    "bottleneck_reaf_decompose": ("test_reaf_resnet", {"impl": "decompose"}),
    "bottleneck_reaf_decompose_loop": ("test_reaf_resnet", {"impl": "decompose_loop"}),
    "bottleneck_reaf_loop": ("test_reaf_resnet", {"impl": "loop"}),
    "bottleneck_reaf_auto": ("test_reaf_resnet", {"impl": "auto", "reaf": "4-1-4"}),
    "bottleneck_reaf_all": ("test_reaf_resnet", {"reaf_convs": "all", "width": 8}),
    "bottleneck_reaf_plus": ("test_reaf_plus_resnet", {}),
    "mobilenet_reaf_plus": ("reaf_plus_mobilenet_v2", {"stem": "cifar"}),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles new models of the same classes: start from an empty code cache."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_compiled_equals_eager(family: str) -> None:
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    eager = create_model(name, num_classes=5, **kwargs)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 16, 16)

    # Training mode: outputs and gradients (BN batch statistics; no dropout in ResNets).
    if not name.startswith("reaf_plus_mobilenet"):
        y_eager, y_compiled = eager(x), compiled(x)
        torch.testing.assert_close(y_compiled, y_eager, rtol=1e-4, atol=1e-5)
        y_eager.square().sum().backward()
        y_compiled.square().sum().backward()
        # Eager ``auto`` may pick another (equivalent) strategy than the compiled graph;
        # batch-2 BatchNorm backward amplifies their fp32 rounding to ~1e-4 relative.
        for (n, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
            scale = p.grad.abs().max().item()
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-3 * scale, msg=n)
    # Eval mode (running statistics, dropout off).
    eager.eval()
    compiled_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_inductor_end_to_end() -> None:
    torch.manual_seed(0)
    model = create_model("test_reaf_resnet", num_classes=5).eval()
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "impl", ["masked", "gather", "decompose", "decompose_loop", "loop", "auto"]
)
@pytest.mark.parametrize("name", ["test_reaf_resnet", "test_reaf_plus_resnet"])
def test_channels_last_equals_contiguous(name: str, impl: str) -> None:
    """Training-mode outputs and gradients do not depend on the memory format."""
    kwargs = {"impl": impl} if name == "test_reaf_resnet" else {}
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kwargs)
    x = torch.randn(3, 3, 16, 16)
    y_contiguous = model(x)
    y_contiguous.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model = model.to(memory_format=torch.channels_last)
    y_channels_last = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y_channels_last, y_contiguous, rtol=1e-4, atol=1e-5)
    y_channels_last.sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)
