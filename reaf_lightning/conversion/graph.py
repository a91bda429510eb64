"""Which channel counts of a network must stay equal: its dataflow, read with ``torch.fx``.

Widening one convolution's output means widening everything that reads that
tensor (the next conv's input, its BatchNorm, a classifier after a flatten)
and every tensor added to it (a residual addition ties the two channel counts
together, across a whole stage). This module traces the network symbolically
(``torch.fx``; one run of the traced graph on the ``meta`` device records each
tensor's shape) and groups the channel dimensions of its 4-D tensors into
*channel classes*: sets of dimensions that must keep one width. A
concatenation's channels are the sum of its parts (each part stays its own class).

A class is *fixed* (keeps its width) when it touches the network's input or
output, or an operation this module does not understand (a reshape that mixes
channels, slicing, a normalisation layer it cannot resize, ...); the reason is
kept, so that the conversion report can name it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from reaf_lightning.errors import one_line
from reaf_lightning.layers import REAFConv2d, REAFPlusConv2d

__all__ = ["ChannelGraph", "ModuleUse", "Value", "read_attributes", "trace_channels"]

# Modules and functions that keep the channel dimension as it is (elementwise or spatial only).
_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
)
_PASS_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    F.dropout,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.avg_pool2d,
    F.max_pool2d,
    F.interpolate,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone"}
_ELEMENTWISE = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.mul,
    operator.imul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
}
_ELEMENTWISE_METHODS = {"add", "add_", "sub", "mul", "mul_", "div"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_SHAPE_QUERIES = {"size", "dim"}


@dataclass
class Value:
    """The channel layout of one tensor: its class ids in order (several after a concat).

    ``mult`` is the number of features per channel once flattened (``H * W``) for a
    2-D tensor made by flattening a feature map, 1 for a feature map itself.
    """

    parts: list[int]
    mult: int = 1
    flat: bool = False


@dataclass
class ModuleUse:
    """A module the rewrite may have to resize, with the layout of its input and output."""

    name: str
    module: nn.Module
    inputs: Value | None
    output: Value | None


@dataclass
class ChannelGraph:
    """Channel classes of a traced network and the modules that read or write them."""

    widths: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    fixed: dict[int, str] = field(default_factory=dict)
    uses: dict[str, ModuleUse] = field(default_factory=dict)
    #: Parameters and buffers the forward reads itself (``self.conv.weight``): their owners'
    #: shapes must not change.
    attributes: set[str] = field(default_factory=set)

    def new_class(self, width: int, fixed: str | None = None) -> int:
        self.widths.append(width)
        self.parent.append(len(self.parent))
        cls = len(self.parent) - 1
        if fixed:
            self.fixed[cls] = fixed
        return cls

    def root(self, cls: int) -> int:
        while self.parent[cls] != cls:
            self.parent[cls] = self.parent[self.parent[cls]]
            cls = self.parent[cls]
        return cls

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        if rb in self.fixed:
            self.fixed.setdefault(ra, self.fixed.pop(rb))

    def fix(self, value: Value | None, reason: str) -> None:
        for part in value.parts if value else ():
            self.fixed.setdefault(self.root(part), reason)

    def fixed_reason(self, cls: int) -> str | None:
        return self.fixed.get(self.root(cls))

    def width(self, value: Value, widths: dict[int, int] | None = None) -> int:
        """Channels (features, when flat) of ``value``, under new class ``widths`` if given."""
        widths = widths or {}
        return value.mult * sum(widths.get(self.root(p), self.widths[p]) for p in value.parts)


class _LeafTracer(fx.Tracer):
    """Tracer that keeps torch.nn layers and the package's REAF layers as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (REAFConv2d, REAFPlusConv2d)) or super().is_leaf_module(m, qualname)


_SHAPE = "reaf_lightning_shape"  # the key of a node's recorded output shape in its meta


class _ShapeRecorder(fx.Interpreter):
    """Runs a traced graph once, keeping each tensor-valued node's shape in its ``meta``."""

    node: fx.Node | None = None

    def run_node(self, n: fx.Node) -> object:
        self.node = n
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta[_SHAPE] = tuple(result.shape)
        return result


def trace_channels(model: nn.Module, input_size: tuple[int, int, int]) -> ChannelGraph:
    """Trace ``model`` (a ``meta``-device copy is enough) and group its channel dimensions.

    Raises:
        ValueError: the network cannot be traced symbolically (data-dependent control
            flow, unsupported Python) or its traced graph cannot run on ``model``'s device
            (it reads tensor values); one line with torch.fx's or the failing node's reason.
    """
    redo = "convert(match=None) converts without tracing, keeping the widths"
    try:
        graph = _LeafTracer().trace(model)
        module = fx.GraphModule(model, graph).eval()
    except Exception as err:  # fx raises many types; all mean "not traceable"
        raise ValueError(
            f"convert: cannot trace {type(model).__name__} with torch.fx "
            f"({type(err).__name__}: {_first_line(err)}); {redo}"
        ) from None
    recorder = _ShapeRecorder(module)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            recorder.run(torch.zeros(1, *input_size, device=device))
    except Exception as err:  # the failing node's own error, whatever it is
        where = f"node {recorder.node.name}" if recorder.node is not None else "its input"
        raise ValueError(
            f"convert: cannot trace {type(model).__name__}: its traced graph fails on the "
            f"{device} device at {where} ({type(err).__name__}: {one_line(_first_line(err))}); "
            f"{redo}"
        ) from None
    channels = ChannelGraph()
    values: dict[fx.Node, Value | None] = {}
    for node in module.graph.nodes:
        values[node] = _visit(node, module, values, channels)
    return channels


def read_attributes(model: nn.Module) -> set[str]:
    """Names of the parameters and buffers ``model``'s forward reads itself (``self.conv.weight``
    in ``F.conv2d(x, self.conv.weight)``), from a symbolic trace; empty if it cannot be traced."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # not traceable: nothing more can be known
        return set()
    return {str(node.target) for node in graph.nodes if node.op == "get_attr"}


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else ""


def _shape(node: object) -> tuple[int, ...] | None:
    return node.meta.get(_SHAPE) if isinstance(node, fx.Node) else None


def _inputs(node: fx.Node, values: dict) -> list[tuple[fx.Node, Value]]:
    found = []
    for arg in node.all_input_nodes:
        if values.get(arg) is not None:
            found.append((arg, values[arg]))
    return found


def _visit(node: fx.Node, module: fx.GraphModule, values: dict, g: ChannelGraph) -> Value | None:
    shape = _shape(node)
    inputs = _inputs(node, values)
    if node.op == "placeholder":
        return _new_output(shape, g, "the network input")
    if node.op == "output":
        for _, value in inputs:
            g.fix(value, "the network output")
        return None
    if node.op == "get_attr":
        g.attributes.add(str(node.target))
        return _new_output(shape, g, f"tensor attribute {node.target}")
    if node.op == "call_module":
        return _visit_module(node, module.get_submodule(node.target), shape, inputs, g)
    return _visit_function(node, shape, inputs, g)


def _new_output(shape: tuple[int, ...] | None, g: ChannelGraph, reason: str) -> Value | None:
    return Value([g.new_class(shape[1], reason)]) if shape and len(shape) >= 2 else None


def _record(g: ChannelGraph, name: str, module: nn.Module, inp: Value | None, out: Value | None):
    """Keep a module's layouts; a module called twice must see the same layouts both times."""
    previous = g.uses.get(name)
    if previous is None:
        g.uses[name] = ModuleUse(name, module, inp, out)
        return out
    for old, new in ((previous.inputs, inp), (previous.output, out)):
        if old and new and len(old.parts) == len(new.parts):
            for a, b in zip(old.parts, new.parts, strict=True):
                g.union(a, b)
        else:
            g.fix(old, f"{name} is called with different layouts")
            g.fix(new, f"{name} is called with different layouts")
    return previous.output


def _visit_module(node, m: nn.Module, shape, inputs, g: ChannelGraph) -> Value | None:
    name = str(node.target)
    inp = inputs[0][1] if len(inputs) == 1 else None
    if type(m) is nn.Conv2d and inp is not None and not inp.flat:
        out = Value([g.new_class(m.out_channels)])
        if m.groups > 1 and m.groups == m.in_channels == m.out_channels and len(inp.parts) == 1:
            g.union(inp.parts[0], out.parts[0])  # depthwise: one channel in, one out
        elif m.groups > 1 and len(inp.parts) > 1:
            g.fix(inp, f"grouped conv {name} reading a concatenation")
        return _record(g, name, m, inp, out)
    if type(m) is nn.BatchNorm2d and inp is not None and not inp.flat:
        return _record(g, name, m, inp, inp)
    if type(m) is nn.Linear and inp is not None and inp.flat:
        out = _new_output(shape, g, f"the output of Linear {name}")
        return _record(g, name, m, inp, out)
    if isinstance(m, _PASS_MODULES) and inp is not None and shape and shape[1:2] == (g.width(inp),):
        return inp
    if isinstance(m, nn.Flatten) and inp is not None:
        return _flatten(inp, shape, node, g)
    reason = f"{type(m).__name__} {name} (a layer convert does not resize)"
    for _, value in inputs:
        g.fix(value, reason)
    return _new_output(shape, g, reason)


def _visit_function(node: fx.Node, shape, inputs, g: ChannelGraph) -> Value | None:
    target = node.target
    method = target if node.op == "call_method" else None
    if method in _SHAPE_QUERIES or target is getattr or (shape is None and not inputs):
        return None
    features = [v for _, v in inputs if not v.flat]
    if (target in _ELEMENTWISE or method in _ELEMENTWISE_METHODS) and shape and len(shape) == 4:
        # x + y, x * scale (a (N, C, 1, 1) attention weight): the channel counts are one.
        wide = [v for n, v in inputs if (_shape(n) or (0, 1))[1] == shape[1] and not v.flat]
        if len(wide) == len(inputs) and wide:
            first = wide[0]
            for other in wide[1:]:
                if len(other.parts) != len(first.parts):
                    g.fix(other, "an addition of differently concatenated tensors")
                    g.fix(first, "an addition of differently concatenated tensors")
                    return first
                for a, b in zip(first.parts, other.parts, strict=True):
                    g.union(a, b)
            return first
    if target in (torch.cat, torch.concat) and shape and len(shape) == 4:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim in (1, -3) and len(features) == len(node.args[0]):
            return Value([p for v in features for p in v.parts])
    if (target in _PASS_FUNCTIONS or method in _PASS_METHODS) and len(features) == 1:
        if shape and len(shape) == 4 and shape[1] == g.width(features[0]):
            return features[0]
    if method == "mean" and len(features) == 1 and shape and len(shape) in (2, 4):
        if shape[1] == g.width(features[0]):  # global average over H, W
            return Value(features[0].parts, 1, flat=len(shape) == 2)
    if (target is torch.flatten or method in _FLATTEN_METHODS) and len(features) == 1:
        return _flatten(features[0], shape, node, g)
    what = getattr(target, "__name__", target)
    reason = f"{what} at {node.name} (an operation convert does not resize)"
    for _, value in inputs:
        g.fix(value, reason)
    return _new_output(shape, g, reason)


def _flatten(value: Value, shape, node: fx.Node, g: ChannelGraph) -> Value | None:
    """(N, C, H, W) -> (N, C * H * W): a Linear after it reads ``C * H * W`` features."""
    source = _shape(node.all_input_nodes[0])
    if shape and source and len(shape) == 2 and len(source) == 4:
        if shape[1] == math.prod(source[1:]):
            return Value(value.parts, source[2] * source[3], flat=True)
    reason = f"reshape at {node.name} (mixes channels with other dimensions)"
    g.fix(value, reason)
    return _new_output(shape, g, reason)
