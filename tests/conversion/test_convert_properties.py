"""Property tests: ``convert`` on generated small CNNs (hypothesis).

Each network is a stem, a few drawn blocks (plain conv + BN, residual pair, a conv
registered under two names and called twice, two convs sharing one weight, depthwise,
grouped, 1x1) and a linear classifier, at drawn widths. Whatever is drawn, the
converted network keeps the output shape, keeps what was shared shared, converts
exactly the convolutions the rules allow (``match=None``: written out here), and its
report counts what an independent count finds: MACs from each layer's connections
(a REAF conv's from ``helpers.reaf_reference``, the paper's mask) and output size,
parameters from each layer's shape.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.reaf_reference import connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import reaf_lightning
from reaf_lightning.layers import REAFConv2d, parse_reaf

# Tiny convolutions: one intra-op thread is several times faster on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")
WIDTHS = (4, 6, 8, 12)
BLOCKS = ("conv", "residual", "shared", "tied", "depthwise", "grouped", "pointwise")


class Generated(nn.Module):
    """A CNN built from a drawn plan; the forward walks the plan (fx unrolls the loop)."""

    def __init__(self, in_channels: int, width: int, blocks: list[tuple], classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.plan: list[tuple[str, list[str]]] = []
        for i, (kind, out, stride, bias) in enumerate(blocks):
            if kind == "conv":
                self._add(
                    kind, i, nn.Conv2d(width, out, 3, stride, 1, bias=bias), nn.BatchNorm2d(out)
                )
                width = out
            elif kind == "residual":
                self._add(
                    kind, i, nn.Conv2d(width, width, 3, 1, 1), nn.Conv2d(width, width, 3, 1, 1)
                )
            elif kind == "shared":  # one module, two names, called twice
                conv = nn.Conv2d(width, width, 3, 1, 1, bias=bias)
                self._add(kind, i, conv, conv)
            elif kind == "tied":  # two modules, one weight
                first, second = nn.Conv2d(width, width, 3, 1, 1), nn.Conv2d(width, width, 3, 1, 1)
                second.weight = first.weight
                self._add(kind, i, first, second)
            elif kind == "depthwise":
                self._add(kind, i, nn.Conv2d(width, width, 3, stride, 1, groups=width))
            elif kind == "grouped" and width % 2 == 0:
                self._add(kind, i, nn.Conv2d(width, out, 3, 1, 1, groups=2))
                width = out
            elif kind == "pointwise":
                self._add(kind, i, nn.Conv2d(width, out, 1, bias=bias))
                width = out
        self.fc = nn.Linear(width, classes)

    def _add(self, kind: str, i: int, *modules: nn.Module) -> None:
        names = [f"{kind}{i}_{j}" for j in range(len(modules))]
        for name, module in zip(names, modules, strict=True):
            self.add_module(name, module)
        self.plan.append((kind, names))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        for kind, names in self.plan:
            layers = [getattr(self, name) for name in names]
            if kind == "conv":
                x = F.relu(layers[1](layers[0](x)))
            elif kind == "residual":
                x = x + layers[1](F.relu(layers[0](x)))
            elif kind in ("shared", "tied"):
                x = F.relu(layers[1](F.relu(layers[0](x))))
            else:
                x = F.relu(layers[0](x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@st.composite
def networks(draw):
    blocks = draw(
        st.lists(
            st.tuples(
                st.sampled_from(BLOCKS),
                st.sampled_from(WIDTHS),
                st.integers(1, 2),
                st.booleans(),
            ),
            min_size=1,
            max_size=4,
        )
    )
    in_channels, width = draw(st.sampled_from((1, 3, 4))), draw(st.sampled_from(WIDTHS))
    size = draw(st.integers(4, 9))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return Generated(in_channels, width, blocks, draw(st.integers(1, 5))), (in_channels, size, size)


SETTINGS = st.fixed_dictionaries(
    {
        "reaf": st.sampled_from(("2-1-2", "4-3-4", "3-2-3", "2-2-1", "4-2-6")),
        "pointwise": st.booleans(),
        "grouped": st.booleans(),
    }
)


def independent_cost(model: nn.Module, input_size: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, parameters) of one image: connections x output positions, weights by shape."""
    macs = 0

    def hook(module: nn.Module, _inputs, output: Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features
        else:
            macs += connections(module) * output.shape[-1] * output.shape[-2]

    modules = {id(m): m for m in model.modules()}.values()
    layers = [m for m in modules if isinstance(m, (nn.Conv2d, REAFConv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_size))
    for handle in handles:
        handle.remove()
    params = 0
    seen: set[int] = set()
    for m in modules:
        for p in m.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                if isinstance(m, REAFConv2d) and p is m.weight:
                    params += connections(m)  # the compact weight: one per connection
                else:
                    params += p.numel()
    return macs, params


def _aliases(model: nn.Module) -> list[list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return [n for n in names.values() if len(n) > 1]


def _tied(model: nn.Module) -> list[tuple[str, str]]:
    return [(f"{k}_0", f"{k}_1") for k, _ in ((n[:-2], 0) for n, _ in model.named_children()
            if n.startswith("tied") and n.endswith("_0"))]  # fmt: skip


def _check_invariants(net, new, report, input_size) -> None:
    x = torch.randn(2, *input_size)
    assert new.eval()(x).shape == net.eval()(x).shape
    for names in _aliases(net):  # one module under several names stays one module
        assert len({id(new.get_submodule(n)) for n in names}) == 1
        if names[0] in report.converted:
            assert all(n in report.converted[names[0]] for n in names[1:])
    for first, second in _tied(net):  # a shared weight stays shared, and untouched
        assert new.get_submodule(first).weight is new.get_submodule(second).weight
        assert first in report.skipped and second in report.skipped[first]
    reaf = {n for n, m in new.named_modules() if isinstance(m, REAFConv2d)}
    assert reaf == set(report.converted)
    assert report.macs == (
        independent_cost(net, input_size)[0],
        independent_cost(new, input_size)[0],
    )
    assert report.params == (
        independent_cost(net, input_size)[1],
        independent_cost(new, input_size)[1],
    )


def _allowed(conv: nn.Module, settings: dict) -> bool:
    """The eligibility rule, written out: square k > 1 (or 1x1 with pointwise), not depthwise,
    groups == 1 (or grouped with grouped=True)."""
    if type(conv) is not nn.Conv2d:
        return False
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    return (
        (conv.kernel_size[0] > 1 or settings["pointwise"])
        and not depthwise
        and (conv.groups == 1 or settings["grouped"])
    )


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), SETTINGS)
def test_convert_keeping_widths(network, settings) -> None:
    net, input_size = network
    new, report = reaf_lightning.convert(net, match=None, input_size=input_size, **settings)
    _check_invariants(net, new, report, input_size)
    spec = parse_reaf(settings["reaf"])
    tied = {n for pair in _tied(net) for n in pair}
    expected = {
        name
        for name, m in net.named_modules()
        if _allowed(m, settings)
        and name not in tied
        and m.in_channels % spec.g_i == 0
        and m.out_channels % spec.g_o == 0
    }
    assert set(report.converted) == expected
    for name in expected:  # at its own widths
        old, converted = net.get_submodule(name), new.get_submodule(name)
        assert (converted.in_channels, converted.out_channels) == (
            old.in_channels,
            old.out_channels,
        )
    untouched = {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)} - expected
    assert all(new.get_submodule(n) is not net.get_submodule(n) for n in expected)
    assert all(type(new.get_submodule(n)) is nn.Conv2d for n in untouched)


@settings(max_examples=15, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), SETTINGS, st.sampled_from(("flops", "params")))
def test_convert_matching_the_cost(network, settings, match) -> None:
    net, input_size = network
    before = {k: v.clone() for k, v in net.state_dict().items()}
    new, report = reaf_lightning.convert(net, match=match, input_size=input_size, **settings)
    _check_invariants(net, new, report, input_size)
    spec = parse_reaf(settings["reaf"])
    tied = {n for pair in _tied(net) for n in pair}
    for name in report.converted:  # only allowed convs, divisible at their new widths
        assert _allowed(net.get_submodule(name), settings) and name not in tied
        layer = new.get_submodule(name)
        assert (layer.g_i, layer.g_m, layer.g_o) == tuple(spec)
    for name in tied:  # a tied conv keeps its shape
        assert new.get_submodule(name).weight.shape == net.get_submodule(name).weight.shape
    assert new.stem.in_channels == input_size[0] and new.fc.out_features == net.fc.out_features
    after = net.state_dict()  # the input network is untouched
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert math.isfinite(report.macs_ratio)
