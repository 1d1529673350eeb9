"""The hidden-unit permutation groups of any net: hand-written, declared by the net, or found by tracing.

G.pt's permutation augmentation, its ``units`` and ``graph`` architectures and ``zoo.align`` need
to know which entries move together when the units of a hidden layer are reordered
(``weightgen.nets.permute`` explains the symmetry). ``permutation_groups`` finds them in this order:

1. **Hand-written** (``permute.GROUPS``): the library's ``mlp``, ``cnn`` and ``vit`` by name. The
   ViT's residual stream and attention heads are beyond what tracing follows.
2. **Declared** by the net: a module with a method ``weightgen_permutation_groups(self)`` returning
   a list of ``HiddenGroup``. A factory returning a plain ``nn.Sequential`` can set it on the
   instance: ``net.weightgen_permutation_groups = lambda: [...]``. The groups are checked against
   the net's state dict (every entry there, every axis of ``size * block * outer`` values).
3. **Traced** with ``torch.fx``: chains of ``nn.Linear`` and ``nn.Conv1d/2d/3d`` layers, each
   optionally followed by BatchNorm, LayerNorm, RMSNorm, InstanceNorm or a GroupNorm of one or of
   every channel, elementwise activations and dropout (as modules, functions or tensor methods),
   pooling after a conv, and a flatten or spatial mean between a conv and a linear layer. A flatten
   makes each channel a block of columns of the next layer. A hidden layer's output units form one
   group: its weight rows and bias, its norm's per-unit parameters and running statistics, and
   the next layer's input columns. The last layer's units are the net's outputs and stay in place.

Whatever else touches a hidden layer's output stops the tracing with the reason: a residual add,
a concatenation, attention, a reshape other than a flatten after a conv, a layer called twice, or
an output read by two consumers. Operations on the raw input before the first layer are free,
since the input is never permuted. Every refusal is one line naming the net and the way out.
"""
from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from .permute import GROUPS, Axis, HiddenGroup, PermutationError, hidden_groups

__all__ = ["Axis", "HiddenGroup", "PermutationError", "DECLARE", "permutation_groups", "declared_groups",
           "traced_groups", "check_groups", "config_uses", "check_config", "AUGMENTATION", "ALIGN"]

DECLARE = "weightgen_permutation_groups"  # the method a net defines to declare its groups

# (what permutes hidden units, the setting that turns it off): the uses a refusal names.
AUGMENTATION = ("G.pt's permutation augmentation", "generator.permutation_augmentation: false")
ALIGN = ("zoo.align", "zoo.align: none")

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
              nn.InstanceNorm3d)
LAYERNORMS = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.CELU,
                       nn.SELU, nn.Mish, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
                       nn.LogSigmoid, nn.Tanhshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                       nn.AlphaDropout, nn.Identity)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
         nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d)
ELEMENTWISE_FUNCTIONS = {F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.leaky_relu, F.elu, F.celu, F.selu, F.mish,
                         F.softplus, F.softsign, F.hardtanh, F.hardswish, F.hardsigmoid, F.logsigmoid, F.tanhshrink,
                         F.sigmoid, F.tanh, F.dropout, F.alpha_dropout, torch.relu, torch.tanh, torch.sigmoid,
                         torch.clamp, torch.clip}
ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "clamp", "clip", "contiguous",
                       "clone"}
SCALAR_OPS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub,
              torch.mul, torch.div}
SCALAR_METHODS = {"add", "sub", "mul", "div", "neg"}
POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                  F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
                  F.adaptive_max_pool2d, F.adaptive_max_pool3d}
REDUCTIONS = {"mean", "amax", "amin", "sum"}  # over a conv's spatial dimensions (global pooling)
FOLLOWED = ("tracing follows Linear and Conv layers, BatchNorm, LayerNorm, pooling, a flatten after a conv "
            "and elementwise activations")


class TraceStop(Exception):
    """Why tracing cannot find a net's hidden units (one clause, no net name)."""


@dataclass(frozen=True)
class _Units:
    """A tensor whose dimension of hidden units belongs to group ``group``: ``channels`` (dim 1, a
    conv's output) or ``features`` (the last dim, a linear layer's or a flatten's), ``block``
    consecutive values per unit."""

    group: int
    kind: str
    block: int = 1


# -- the one entry point ---------------------------------------------------------------------
def permutation_groups(net_build: dict, shapes: dict[str, Sequence[int]], build: Callable[[], nn.Module] | None = None,
                       uses: Sequence[tuple[str, str]] = (AUGMENTATION,)) -> list[HiddenGroup]:
    """The hidden-unit groups of the net ``net_build`` describes (``name``, ``kwargs``, ``input_shape``,
    ``num_classes``: a zoo's ``net_build``), checked against ``shapes`` (its state dict's entries).

    ``build`` makes an untrained instance (default: ``build_net`` from ``net_build``); only nets
    outside the hand-written table are built. ``uses`` are the (feature, setting that turns it off)
    pairs that a refusal names as the ways out. Raises ``PermutationError`` in one line."""
    name = net_build.get("name", "?")
    shapes = {k: tuple(v) for k, v in shapes.items()}
    if name in GROUPS:
        return hidden_groups(name, shapes, net_build.get("kwargs"))
    if "input_shape" not in net_build:
        raise PermutationError(refusal(name, "it is not in weightgen's hand-written table and no input shape "
                                             "is recorded to trace it with", uses))
    try:
        model = build() if build is not None else _build(net_build)
    except Exception as e:  # the user's factory may raise anything: name it, in one line
        raise PermutationError(refusal(name, f"it could not be built to trace it ({_brief(e)})", uses)) from None
    try:
        groups, where = declared_groups(model), f"declared by {DECLARE}()"
        if groups is None:
            groups, where = traced_groups(model, net_build["input_shape"]), "traced"
    except TraceStop as e:
        raise PermutationError(refusal(name, str(e), uses)) from None
    problem = check_groups(groups, shapes)
    if problem:
        raise PermutationError(refusal(name, f"its groups {where} do not fit its entries: {problem}", uses))
    return groups


def refusal(name: str, reason: str, uses: Sequence[tuple[str, str]]) -> str:
    """One line: the net, why its hidden units are unknown, and the ways out."""
    what = " and ".join(u for u, _ in uses) or "permuting hidden units"
    offs = " and ".join(o for _, o in uses)
    verb = "do" if len(uses) > 1 else "does"
    return (f"{what} {verb} not know net '{name}': {reason}; declare its hidden units with a {DECLARE}() "
            f"method on the net (weightgen.nets.symmetry){f', or set {offs}' if offs else ''}")


def _build(net_build: dict) -> nn.Module:
    from weightgen.nets import build_net

    return build_net(net_build["name"], net_build["input_shape"], net_build["num_classes"],
                     **net_build.get("kwargs", {}))


def _brief(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


# -- declared ----------------------------------------------------------------------------------
def declared_groups(model: nn.Module) -> list[HiddenGroup] | None:
    """The groups ``model`` declares with a ``weightgen_permutation_groups()`` method; None when it has
    none. Raises ``TraceStop`` when the method fails or returns anything but ``HiddenGroup`` objects."""
    declare = getattr(model, DECLARE, None)
    if declare is None:
        return None
    try:
        groups = list(declare())
    except Exception as e:  # the user's method may raise anything: name it, in one line
        raise TraceStop(f"its {DECLARE}() failed ({_brief(e)})") from None
    bad = [g for g in groups if not isinstance(g, HiddenGroup)]
    if bad:
        raise TraceStop(f"its {DECLARE}() must return a list of HiddenGroup (weightgen.nets.symmetry), "
                        f"not of {type(bad[0]).__name__}")
    return groups


def check_groups(groups: list[HiddenGroup], shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The first axis of ``groups`` that does not fit ``shapes`` (a missing entry, a dimension out of
    range, a length other than ``size * block * outer``), in words; None when all fit."""
    for i, g in enumerate(groups):
        for a in g.axes:
            if a.name not in shapes:
                return f"group {i} names entry '{a.name}', which the net's state dict lacks"
            shape = shapes[a.name]
            if not 0 <= a.dim < len(shape):
                return f"group {i}: entry '{a.name}' of shape {shape} has no dimension {a.dim}"
            want = g.size * a.block * a.outer
            if shape[a.dim] != want:
                return (f"group {i}: entry '{a.name}' has {shape[a.dim]} values along dimension {a.dim} "
                        f"(shape {shape}), "
                        f"not {g.size} units x {a.block} x {a.outer} = {want}")
    return None


# -- traced ------------------------------------------------------------------------------------
def traced_groups(model: nn.Module, input_shape: Sequence[int] | None) -> list[HiddenGroup]:
    """The hidden-unit groups of ``model``, found by tracing its forward pass on a batch of two
    inputs of ``input_shape`` (see the module docstring); raises ``TraceStop`` with the reason."""
    if input_shape is None:
        raise TraceStop("its input shape is unknown, so it cannot be traced")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many kinds for control flow it cannot follow
        raise TraceStop(f"torch.fx cannot trace it ({_brief(e)})") from None
    _propagate_shapes(gm, model, input_shape)
    return _Walk(gm, model).groups()


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, input_shape: Sequence[int]) -> None:
    """Every node's output shape in ``node.meta['tensor_meta']``, from zeros of ``(2, *input_shape)``
    run in eval mode; the model's training flags and running statistics are left as they were."""
    from torch.fx.passes.shape_prop import ShapeProp

    modes = [(m, m.training) for m in model.modules()]
    try:
        gm.eval()
        with torch.no_grad():
            param = next(model.parameters(), None)
            x = torch.zeros(2, *input_shape, device=param.device if param is not None else "cpu")
            ShapeProp(gm).propagate(x)  # further inputs take their defaults
    except Exception as e:
        raise TraceStop(f"it does not run on inputs of shape {tuple(input_shape)} ({_brief(e)})") from None
    finally:
        for m, training in modes:
            m.training = training


class _Walk:
    """One pass over a traced graph, in order, tracking which group's units each tensor carries."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module):
        self.graph = gm.graph
        self.modules = dict(model.named_modules())
        self.entries = set(model.state_dict())
        self.calls = Counter(n.target for n in self.graph.nodes if n.op == "call_module")
        self.units: dict[fx.Node, _Units | None] = {}
        self.owner: list[str] = []  # the layer of each group
        self.axes: list[list[Axis]] = []
        self.sizes: list[int] = []
        self.consumed: set[int] = set()
        self.outputs: set[int] = set()
        self.fanout: str | None = None

    # .. the walk ..
    def groups(self) -> list[HiddenGroup]:
        for node in self.graph.nodes:
            if node.op == "output":
                self._output(node)
                continue
            hidden = [a for a in node.all_input_nodes if self.units.get(a) is not None]
            if node.op in ("placeholder", "get_attr"):
                self.units[node] = None
            elif not hidden:
                self.units[node] = self._from_input(node)
            else:
                self.units[node] = self._on_units(node, hidden)
            if self.units[node] is not None and len(node.users) > 1 and self.fanout is None:
                users = ", ".join(f"'{u.name}'" for u in node.users)
                self.fanout = (f"the units of layer '{self.owner[self.units[node].group]}' at '{node.name}' "
                               f"feed {len(node.users)} consumers ({users})")
        if self.fanout:
            raise TraceStop(self.fanout)
        keep = [g for g in range(len(self.owner)) if g in self.consumed and g not in self.outputs]
        return [HiddenGroup(self.sizes[g], tuple(self.axes[g])) for g in keep]

    def _output(self, node: fx.Node) -> None:
        out = node.args[0]
        if isinstance(out, fx.Node):
            if self.units.get(out) is not None:
                self.outputs.add(self.units[out].group)
            return
        hidden = [a for a in node.all_input_nodes if self.units.get(a) is not None]
        if hidden:
            raise TraceStop("its forward returns several tensors, so which units are outputs is unclear")

    def _from_input(self, node: fx.Node) -> _Units | None:
        """A node reading only the raw input (or constants): a layer starts a group; anything else is free."""
        if node.op == "call_module" and isinstance(self.modules[node.target], LAYERS):
            return self._new_group(node)
        return None

    def _new_group(self, node: fx.Node) -> _Units:
        layer = self.modules[node.target]
        if self.calls[node.target] > 1:
            raise TraceStop(f"layer '{node.target}' is called {self.calls[node.target]} times (shared weights)")
        weight, bias = f"{node.target}.weight", f"{node.target}.bias"
        if weight not in self.entries:
            raise TraceStop(f"layer '{node.target}' keeps its weight under another name than '{weight}' "
                            "(a parametrization?)")
        axes = [Axis(weight, 0)] + ([Axis(bias, 0)] if bias in self.entries else [])
        self.owner.append(node.target)
        self.axes.append(axes)
        self.sizes.append(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)
        return _Units(len(self.owner) - 1, "channels" if isinstance(layer, CONVS) else "features")

    def _on_units(self, node: fx.Node, hidden: list[fx.Node]) -> _Units:
        """A node reading hidden units: where they go, or why tracing stops here."""
        src = hidden[0]
        u = self.units[src]
        layer = self.owner[u.group]
        if len(node.all_input_nodes) > 1:
            others = ", ".join(f"'{a.name}'" for a in node.all_input_nodes if a is not src)
            raise TraceStop(f"{_what(node, self.modules)} combines the units of layer '{layer}' with "
                            f"{others}, as a residual connection, a concatenation or attention does")
        if node.op == "call_module":
            return self._module(node, u)
        if node.op == "call_function":
            return self._function(node, u)
        return self._method(node, u)

    def _stop(self, node: fx.Node, u: _Units, why: str = "") -> TraceStop:
        return TraceStop(f"{_what(node, self.modules)} reads the units of layer "
                         f"'{self.owner[u.group]}'{why or '; ' + FOLLOWED}")

    # .. modules ..
    def _module(self, node: fx.Node, u: _Units) -> _Units:
        m = self.modules[node.target]
        if isinstance(m, ELEMENTWISE_MODULES):
            return u
        if isinstance(m, LAYERS):
            self._consume(node, u, m)
            return self._new_group(node)
        if isinstance(m, nn.Flatten):
            return self._flatten(node, u, m.start_dim, m.end_dim)
        if isinstance(m, POOLS):
            return self._pool(node, u)
        if self.calls[node.target] > 1:
            raise TraceStop(f"module '{node.target}' is called {self.calls[node.target]} times (shared weights)")
        size = self.sizes[u.group] * u.block
        if isinstance(m, nn.PReLU):
            if m.num_parameters == 1:
                return u
            self._per_unit(node, u, m.num_parameters == size and self._unit_dim_is_1(node, u), ("weight",))
            return u
        if isinstance(m, BATCHNORMS):
            self._per_unit(node, u, m.num_features == size and self._unit_dim_is_1(node, u),
                           ("weight", "bias", "running_mean", "running_var"))
            return u
        if isinstance(m, nn.GroupNorm):
            ok = u.kind == "channels" and m.num_channels == size and m.num_groups in (1, size)
            self._per_unit(node, u, ok, ("weight", "bias"), "a GroupNorm of one group or of one per channel")
            return u
        if isinstance(m, LAYERNORMS):
            shape = tuple(m.normalized_shape)
            self._per_unit(node, u, u.kind == "features" and shape == (size,), ("weight", "bias"),
                           "a norm over the features of a linear layer")
            return u
        raise self._stop(node, u)

    def _unit_dim_is_1(self, node: fx.Node, u: _Units) -> bool:
        # BatchNorm and PReLU act on dim 1: a conv's channels, or a linear layer's features of a 2D batch
        return u.kind == "channels" or len(_shape(node.all_input_nodes[0])) == 2

    def _per_unit(self, node: fx.Node, u: _Units, ok: bool, names: tuple[str, ...], needs: str = "") -> None:
        """The entries of a module indexed by the units (a norm's scale and shift, its running statistics)."""
        if not ok:
            raise self._stop(node, u, f", but does not act on its {self.sizes[u.group]} units one by one"
                                      f"{f' ({needs})' if needs else ''}")
        for n in names:
            entry = f"{node.target}.{n}"
            if entry in self.entries:
                self.axes[u.group].append(Axis(entry, 0, u.block, buffer=n.startswith("running_")))

    def _consume(self, node: fx.Node, u: _Units, layer: nn.Module) -> None:
        """The next layer's input columns (a block each after a flatten) belong to the units' group."""
        size = self.sizes[u.group]
        if isinstance(layer, nn.Linear):
            if u.kind != "features":
                raise self._stop(node, u, ", which puts its channels in dimension 1, not last: "
                                          "flatten or pool it first")
            fits = layer.in_features == size * u.block
        else:
            if u.kind != "channels":
                raise self._stop(node, u, ", whose units are features, not a conv's channels")
            if layer.groups != 1:
                raise self._stop(node, u, f", but is a grouped conv (groups={layer.groups}), "
                                          "which mixes units in groups")
            fits = layer.in_channels == size
        if not fits:
            inputs = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            raise self._stop(node, u, f", but takes {inputs} inputs, not {size} units x {u.block}")
        self.axes[u.group].append(Axis(f"{node.target}.weight", 1, u.block))
        self.consumed.add(u.group)

    # .. functions and methods ..
    def _function(self, node: fx.Node, u: _Units) -> _Units:
        fn = node.target
        if fn in ELEMENTWISE_FUNCTIONS or (fn in SCALAR_OPS and _scalars_only(node)):
            return u
        if fn is torch.flatten:
            return self._flatten(node, u, *_dims(node, ("start_dim", 0), ("end_dim", -1)))
        if fn in POOL_FUNCTIONS:
            return self._pool(node, u)
        if fn in {getattr(torch, r) for r in REDUCTIONS}:
            return self._reduce(node, u)
        raise self._stop(node, u)

    def _method(self, node: fx.Node, u: _Units) -> _Units:
        name = node.target
        if name in ELEMENTWISE_METHODS or (name in SCALAR_METHODS and _scalars_only(node)):
            return u
        if name == "flatten":
            return self._flatten(node, u, *_dims(node, ("start_dim", 0), ("end_dim", -1)))
        if name in REDUCTIONS:
            return self._reduce(node, u)
        if name in ("view", "reshape", "size", "permute", "transpose", "unsqueeze", "squeeze", "chunk", "split"):
            raise self._stop(node, u, f"; only a flatten after a conv layer is followed, not '.{name}()'")
        raise self._stop(node, u)

    def _flatten(self, node: fx.Node, u: _Units, start: int, end: int) -> _Units:
        shape = _shape(node.all_input_nodes[0])
        start, end = start % len(shape), end % len(shape)
        if end != len(shape) - 1 or start != 1:
            raise self._stop(node, u, f"; only flattening from dimension 1 to the last is followed "
                                      f"(got {start} to {end} of {len(shape)})")
        if u.kind == "channels":
            return _Units(u.group, "features", math.prod(shape[2:]))
        if len(shape) == 2:
            return u
        raise self._stop(node, u, f", flattening its features with the other dimensions of shape {tuple(shape)}")

    def _pool(self, node: fx.Node, u: _Units) -> _Units:
        if u.kind != "channels":
            raise self._stop(node, u, ", pooling over its features; pooling is followed only after a conv")
        return u

    def _reduce(self, node: fx.Node, u: _Units) -> _Units:
        shape = _shape(node.all_input_nodes[0])
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        dims = [dims] if isinstance(dims, int) else list(dims) if dims is not None else []
        dims = sorted(d % len(shape) for d in dims)
        if u.kind != "channels" or not dims or 0 in dims or 1 in dims:
            raise self._stop(node, u, "; only a reduction over a conv's spatial dimensions is followed")
        if keepdim or len(shape) - len(dims) > 2:
            return u
        return _Units(u.group, "features")


def _what(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A node in words: a module by its name and type, a function or method call by its node's name."""
    if node.op == "call_module":
        return f"module '{node.target}' ({type(modules[node.target]).__name__})"
    if node.op == "call_method":
        return f"'{node.name}' (.{node.target}())"
    fn = node.target
    module = (getattr(fn, "__module__", None) or "").lstrip("_")
    return f"'{node.name}' ({module}.{getattr(fn, '__name__', str(fn))})".replace("(.", "(")


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise TraceStop(f"the shape of '{node.name}' is unknown after running the net")
    return tuple(meta.shape)


def _scalars_only(node: fx.Node) -> bool:
    """A binary operation of one tensor with plain numbers (scaling, shifting): elementwise."""
    return all(isinstance(a, (int, float, bool)) for a in [*node.args, *node.kwargs.values()]
               if not isinstance(a, fx.Node))


def _dims(node: fx.Node, *params: tuple[str, int]) -> tuple[int, ...]:
    """The values of positional-or-keyword int parameters after the tensor (a flatten's start and end)."""
    out = []
    for i, (key, default) in enumerate(params, start=1):
        out.append(node.kwargs.get(key, node.args[i] if len(node.args) > i else default))
    return tuple(int(v) for v in out)


# -- the config check ---------------------------------------------------------------------------
def config_uses(cfg: Any) -> list[tuple[str, str]]:
    """(feature, setting that turns it off) for each part of experiment config ``cfg`` that permutes
    hidden units: ``zoo.align``, and G.pt's augmentation or its ``units``/``graph`` architecture."""
    uses = []
    if cfg.zoo.align != "none":
        uses.append((f"zoo.align '{cfg.zoo.align}'", ALIGN[1]))
    gen = cfg.generator
    if gen.method == "gpt":
        if gen.architecture in ("units", "graph"):
            uses.append((f"G.pt's architecture '{gen.architecture}'", "generator.architecture: chunks"))
        if gen.permutation_augmentation:
            uses.append(AUGMENTATION)
    return uses


def check_config(cfg: Any, net_build: dict, model: nn.Module) -> None:
    """Refuse, in one line, an experiment whose ``zoo.align`` or G.pt needs hidden units that
    ``model`` (built from ``net_build``) does not give; run before any zoo member is trained."""
    uses = config_uses(cfg)
    if not uses:
        return
    groups = permutation_groups(net_build, {k: tuple(v.shape) for k, v in model.state_dict().items()},
                                build=lambda: model, uses=uses)
    if not groups and cfg.zoo.align != "none":
        raise PermutationError(f"zoo.align '{cfg.zoo.align}': net '{net_build.get('name', '?')}' has no hidden "
                               f"layer whose units could be permuted; use {ALIGN[1]}")
