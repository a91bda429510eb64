"""What ``convert`` must keep shared, so that it never unties weights.

Three ways a network shares a layer, and what ``convert`` does with each (ours):

* one module registered under several names (``self.b = self.a``): it is one
  layer, converted or resized once, and the new module is set under every name
  (``rewrite.apply_layout``; the report names them all);
* one parameter held by several modules (``self.b.weight = self.a.weight``);
* a parameter the forward reads itself (``F.conv2d(x, self.a.weight)``).

In the last two, replacing one holder would leave the others with the old
tensor, so the modules involved are left as they are: not converted, and their
channel counts keep their widths (the report says which parameter ties them).
Converting them together is not attempted: the holders may use the tensor
differently (another stride, a transposed use), and a REAF weight has another
shape than the dense one.
"""

from __future__ import annotations

from torch import nn

from reaf_lightning.conversion.graph import ChannelGraph

__all__ = ["keep_widths", "shared_parameters", "tied_modules"]


def shared_parameters(model: nn.Module) -> dict[str, str]:
    """Modules holding a parameter that another module holds too, with the reason naming both."""
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            holders.setdefault(id(parameter), []).append(name)
    shared: dict[str, str] = {}
    for names in holders.values():
        for name in names if len(names) > 1 else ():
            others = ", ".join(n for n in names if n != name)
            shared.setdefault(
                name, f"shares a parameter with {others} (replacing it would untie them)"
            )
    return shared


def tied_modules(shared: dict[str, str], attributes: set[str]) -> dict[str, str]:
    """``shared`` and the owners of the ``attributes`` the forward reads itself, with why."""
    tied = dict(shared)
    for attribute in sorted(attributes):
        owner = attribute.rpartition(".")[0]
        tied.setdefault(owner, f"its {attribute} is read directly by the forward too")
    return tied


def keep_widths(graph: ChannelGraph, tied: dict[str, str]) -> None:
    """Fix the channel classes every ``tied`` module reads and writes: it is never resized."""
    for name, reason in tied.items():
        use = graph.uses.get(name)
        if use is not None:
            graph.fix(use.inputs, f"{name}, which {reason}")
            graph.fix(use.output, f"{name}, which {reason}")
