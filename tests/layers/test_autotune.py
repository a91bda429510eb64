"""``impl="auto"``: times the table's candidates once per signature, or follows a fixed rule."""

from __future__ import annotations

import torch

from reaf_lightning.layers import (
    REAFConv2d,
    autotune,
    autotune_cache,
    parse_reaf,
    resolve_auto_impl,
)
from reaf_lightning.layers.autotune import candidates, useful_macs

IMPLS = ("masked", "gather", "decompose", "decompose_loop", "loop")


def test_auto_times_strategies_once_per_signature(monkeypatch) -> None:
    monkeypatch.setattr(autotune, "AUTOTUNE_MIN_MACS", 0)  # time even this small layer
    cache = autotune_cache()
    cache.clear()
    layer = REAFConv2d(16, 16, 3, 4, 3)
    twin = REAFConv2d(16, 16, 3, 4, 3)
    x = torch.randn(2, 16, 8, 8)
    before = layer.weight.detach().clone()
    y = layer(x)
    assert len(cache) == 1 and next(iter(cache.values())) in candidates(layer.plan)
    twin(x)  # same signature: served from the cache
    layer(x[:1])  # new input shape: tuned again
    assert len(cache) == 2
    assert layer.weight.grad is None and torch.equal(layer.weight, before)  # timing used copies
    forced = REAFConv2d(16, 16, 3, 4, 3, impl=layer.resolved_impl(x))
    forced.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y, forced(x))


def test_auto_candidates() -> None:
    """G_M = 1: gather and decompose_loop would repeat others' convs; dense: nothing to choose."""
    assert set(candidates(parse_reaf("4-3"))) == set(IMPLS)
    assert candidates(parse_reaf("8-1")) == ("masked", "decompose", "loop")
    assert candidates(parse_reaf("2-2")) == ("masked",)


def test_auto_does_not_time_tiny_calls() -> None:
    cache = autotune_cache()
    cache.clear()
    layer = REAFConv2d(16, 16, 3, 4, 3)
    x = torch.randn(2, 16, 6, 6)
    assert useful_macs(layer.plan, x) == 2 * 16 * 36 * 12 * 9  # by hand: N * C_out * HW * M * k^2
    assert layer.resolved_impl(x) == resolve_auto_impl(layer.spec, "cpu") and not cache


def test_auto_fallback_rule_when_timing_is_not_allowed() -> None:
    """Deterministic mode (and compile/meta) never time: a fixed rule decides."""
    assert resolve_auto_impl(parse_reaf("4-4-1"), "cpu") == "masked"  # dense: nothing to save
    assert resolve_auto_impl(parse_reaf("4-3-4"), "cpu") == "decompose"
    assert resolve_auto_impl(parse_reaf("8-1-8"), "cpu") == "decompose"
    assert resolve_auto_impl(parse_reaf("4-3-4"), "cuda") == "masked"
    assert resolve_auto_impl(parse_reaf("8-1-8"), "cuda") == "decompose"
    autotune_cache().clear()
    layer = REAFConv2d(64, 64, 3, 8, 1)
    torch.use_deterministic_algorithms(True)  # the conftest fixture restores the mode
    assert layer.resolved_impl(torch.randn(2, 64, 24, 24)) == "decompose"
    assert not autotune_cache()
