"""Which layers' outputs are non-negative, so that their class selectivity is defined.

The selectivity index ``(u_max - u_-max) / (u_max + u_-max)`` lies in [0, 1]
only when the class means are non-negative; the paper measures the outputs of the
ResNet stages and of the average pool (§IV-E), which follow a ReLU. For a layer whose
outputs can be negative (logits, a BatchNorm output, MobileNetV2's linear bottleneck
blocks ``features.1``-``features.17``)
the index is not a selectivity at all (values above 1 or below 0, a
denominator that can vanish), so such a layer is refused, with the nearest
layer whose output is a ReLU's (ours: the alternative, measuring after the ReLU
the layer feeds, would silently measure another layer than the one named).

How it is decided, from one forward pass (the network's structure, not the
values of one batch): a module's output is non-negative when it is the output
of a ReLU-like activation (``ReLU``, ``ReLU6``, ``Hardtanh`` with ``min_val >=
0``, ``Sigmoid``, ``Softmax``, ``Hardsigmoid``, ``Softplus``) not modified
in place since, or a pooling, flattening, identity or dropout module applied
to such an output. A block that returns its last ReLU's output (a ResNet
stage, ``nn.Sequential(conv, bn, relu)``) therefore qualifies; one that adds
after the ReLU or ends in a BatchNorm does not. Imports torch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reaf_lightning.errors import ConfigError
from reaf_lightning.training.private_api import tensor_version

__all__ = ["NON_NEGATIVE_ACTIVATIONS", "check_measurable_layers", "non_negative_modules"]

#: Modules whose output is >= 0 whatever their input.
NON_NEGATIVE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.Sigmoid,
    nn.Softmax,
    nn.Hardsigmoid,
    nn.Softplus,
)
#: Modules whose output is >= 0 when their input is (they average, pick or pass values).
_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)


def _is_activation(module: nn.Module) -> bool:
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return module.min_val >= 0
    return isinstance(module, NON_NEGATIVE_ACTIVATIONS)


def non_negative_modules(model: nn.Module, example: Tensor) -> list[tuple[str, int, bool, int]]:
    """Run ``model`` once on ``example`` and say, per module call, if its output is >= 0.

    Returns:
        ``(name, number of calls of that module, non-negative, output id)`` per
        module call, in the order the calls returned (a submodule before its
        parent); calls with equal output ids returned the same tensor.
    """
    known: dict[int, tuple[Tensor, int]] = {}  # id -> (tensor kept alive, version when marked)
    alive: list[object] = []  # every output, so that no id is reused during the pass
    calls: list[tuple[str, bool, int]] = []
    counts: dict[str, int] = {}

    def marked(tensor: object) -> bool:
        if not isinstance(tensor, Tensor) or id(tensor) not in known:
            return False
        kept, version = known[id(tensor)]
        return kept is tensor and tensor_version(tensor) == version  # not changed in place since

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            first = inputs[0] if inputs else None
            non_negative = isinstance(output, Tensor) and (
                _is_activation(module)
                or (isinstance(module, _PRESERVING) and marked(first))
                or marked(output)
            )
            if non_negative:
                known[id(output)] = (output, tensor_version(output))
            alive.append(output)
            calls.append((name, non_negative, id(output)))
            counts[name] = counts.get(name, 0) + 1

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        # Outside inference mode (Lightning validates in it), where tensors keep the version
        # counter that tells an output changed in place after its ReLU.
        with torch.inference_mode(False), torch.no_grad():
            model(example.clone())
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return [(name, counts[name], ok, key) for name, ok, key in calls]


def check_measurable_layers(model: nn.Module, layers: Sequence[str], example: Tensor) -> None:
    """Refuse a layer that runs more than once per forward pass or whose output can be negative.

    A module called twice (torchvision's Bottleneck calls its one ``relu`` three
    times) has no single output to measure; a negative output has no selectivity.

    Args:
        model: the network (its modules' train/eval flags are restored).
        layers: the dotted module names to be measured.
        example: one input batch (two images are enough; only the structure matters).

    Raises:
        ConfigError: one line naming the layer and the nearest layer whose output
            is non-negative (by position in the forward pass, a later one on a tie).
    """
    calls = non_negative_modules(model, example)
    # Of the modules returning one tensor (a ReLU and the block ending in it), name the outermost.
    last_of = {key: i for i, (_, _, _, key) in enumerate(calls)}
    candidates = [
        (i, n)
        for i, (n, count, ok, key) in enumerate(calls)
        if ok and count == 1 and last_of[key] == i
    ]
    for layer in layers:
        positions = [i for i, (n, _, _, _) in enumerate(calls) if n == layer]
        if len(positions) > 1:
            raise ConfigError(
                f"layer {layer!r} ({type(model.get_submodule(layer)).__name__}) runs more than "
                f"once ({len(positions)} times) in one forward pass, so its output is ambiguous; "
                "name a block or stage (e.g. 'layer1') instead of a shared module such as 'relu'"
            )
        if not positions or all(calls[i][2] for i in positions):
            continue
        where = positions[-1]
        others = [(abs(i - where), -i, n) for i, n in candidates if n != layer]
        nearest = min(others)[2] if others else None
        hint = (
            f"; the nearest layer whose output is a ReLU's is {nearest!r}"
            if nearest
            else "; this network has no layer whose output is a ReLU's"
        )
        raise ConfigError(
            f"layer {layer!r} ({type(model.get_submodule(layer)).__name__}) can output negative "
            "values, for which class selectivity is undefined (the paper measures stage outputs, "
            "which follow a ReLU)" + hint
        )
