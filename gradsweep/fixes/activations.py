"""Activation functions by name, and the transform that swaps them in a model.

An activation is found two ways: as a module (`nn.Sigmoid()` held anywhere in the
tree) or as a call in a traced forward (`torch.sigmoid(x)`, `F.relu(x)`,
`x.sigmoid()`; note that `F.sigmoid(x)` and `F.tanh(x)` trace as the method calls
`x.sigmoid()` and `x.tanh()`). Each has a kind: its functional name, e.g. "leaky_relu".
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from gradsweep.fixes import graphs

# Name -> constructor. A new activation goes here (and in conf/activation/<name>.yaml).
ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

# Every module class that counts as an activation when swapping or when finding
# where a norm goes: the registry's own plus the common ones users write.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid,
    nn.Tanh,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.LogSigmoid,
    nn.Tanhshrink,
)

# Module class -> kind (the name of its functional form).
MODULE_KINDS: dict[type[nn.Module], str] = {
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "prelu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Softplus: "softplus",
    nn.Hardtanh: "hardtanh",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Hardswish: "hardswish",
    nn.LogSigmoid: "logsigmoid",
    nn.Tanhshrink: "tanhshrink",
}


def _functional_kinds() -> dict[object, tuple[str, str]]:
    """Function object -> (kind, how the user wrote it), for calls a trace records.

    F.prelu is left out: it takes a learned weight, which a swap would drop.
    """
    found: dict[object, tuple[str, str]] = {}
    for kind in MODULE_KINDS.values():
        if kind == "prelu":
            continue
        for prefix, namespace in (("F", F), ("torch", torch)):
            for name in (kind, f"{kind}_"):
                function = getattr(namespace, name, None)
                if function is not None:
                    found.setdefault(function, (kind, f"{prefix}.{name}"))
    found[torch.special.expit] = ("sigmoid", "torch.special.expit")
    return found


FUNCTION_KINDS = _functional_kinds()
# Tensor methods a trace records: `x.sigmoid()`, and `F.sigmoid(x)` / `F.tanh(x)` too.
METHOD_KINDS: dict[str, str] = {
    name: kind
    for kind in MODULE_KINDS.values()
    if kind != "prelu"
    for name in (kind, f"{kind}_")
    if hasattr(torch.Tensor, name)
}

# Saturating activations: their derivative is at most 1/4 (sigmoid) or 1 (tanh)
# and near zero away from the origin, which is what starves early layers.
SATURATING = frozenset({"sigmoid", "tanh"})
RELU_FAMILY = frozenset({"relu", "leaky_relu", "gelu", "silu"})
# Every kind that is flat, or nearly (leaky, GELU, SiLU), for negative inputs: a unit of these
# is dead when no input reaches its positive side.
FLAT_BELOW_ZERO = frozenset(
    {"relu", "relu6", "leaky_relu", "prelu", "elu", "selu", "celu", "gelu", "silu", "mish"}
)


def create_activation(name: str, **kwargs: object) -> nn.Module:
    """Build the activation module `name` with its options (e.g. negative_slope)."""
    try:
        factory = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None
    return factory(**kwargs)


def activation_name(module: nn.Module) -> str | None:
    """The registry name of an activation module, or None if it is not one of ours."""
    for name, factory in ACTIVATIONS.items():
        if type(module) is factory:
            return name
    return None


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATION_TYPES)


def kind_of(module: nn.Module) -> str | None:
    """The kind of an activation module ("leaky_relu" for nn.LeakyReLU), else None."""
    for cls in type(module).__mro__:
        if cls in MODULE_KINDS:
            return MODULE_KINDS[cls]
    return None


def node_kind(root: nn.Module, node: fx.Node) -> str | None:
    """The activation kind a traced node computes, whether module, function or method."""
    if node.op == "call_module":
        module = graphs.called_module(root, node)
        return kind_of(module) if module is not None and is_activation(module) else None
    if node.op == "call_function":
        try:
            return FUNCTION_KINDS.get(node.target, (None, ""))[0]
        except TypeError:  # an unhashable callable is no activation we know
            return None
    if node.op == "call_method":
        return METHOD_KINDS.get(str(node.target))
    return None


def _written(node: fx.Node) -> str:
    """How the user wrote a functional activation call, for the account."""
    if node.op == "call_method":
        return f"x.{node.target}()"
    return FUNCTION_KINDS[node.target][1]


def describe(root: nn.Module, node: fx.Node) -> str:
    """An activation node as an account names it: "torch.sigmoid", "x.tanh()", "GELU"."""
    module = graphs.called_module(root, node)
    return type(module).__name__ if module is not None else _written(node)


def _same_as_target(node: fx.Node, kind: str, name: str, target: nn.Module) -> bool:
    """Whether a call already computes what the chosen activation module would."""
    if kind != name:
        return False
    if kind == "leaky_relu":
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        return slope == getattr(target, "negative_slope", None)
    if kind == "gelu":
        return node.kwargs.get("approximate", "none") == getattr(target, "approximate", "none")
    return True


def dominant_activation(model: nn.Module) -> str | None:
    """The registry name of the activation the model uses most, if any.

    Counts activation modules and, where the model traces, activation calls in its
    forward. Initialization schemes match their gain to it when the user keeps the
    model's own activations.
    """
    counts: dict[str, int] = {}
    for module in model.modules():
        name = activation_name(module)
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    for _, module in graphs.editable_modules(model):
        try:
            graph = graphs.trace(module)
        except graphs.TraceFailure:
            continue
        for node in graph.nodes:
            kind = node_kind(module, node) if node.op != "call_module" else None
            if kind in ACTIVATIONS:
                counts[kind] = counts.get(kind, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def swap_activations(
    model: nn.Module, name: str, kinds: Collection[str] | None = None, **kwargs: object
) -> str:
    """Replace every activation of the given `kinds` in `model` with a `name` activation.

    Modules are replaced where they are registered, anywhere in the tree. Calls in a
    forward (`torch.sigmoid(x)`, `F.relu(x)`, `x.tanh()`) are found by tracing each
    module with torch.fx and become calls to a new activation module registered
    beside the layer that feeds them (`layers_0_act`); where a forward does not trace,
    the account names the calls left as they are. `kinds` are functional names
    ("sigmoid", "tanh", "leaky_relu", ...); None means every activation. One that
    already is the chosen activation stays. Returns an account of the change.
    """
    target = create_activation(name, **kwargs)
    wanted = set(MODULE_KINDS.values()) if kinds is None else set(kinds)
    unknown = wanted - set(MODULE_KINDS.values())
    if unknown:
        raise ValueError(f"unknown activation kinds {sorted(unknown)}; e.g. {sorted(ACTIVATIONS)}")
    replaced: dict[str, int] = {}
    kept = 0
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if not is_activation(child) or kind_of(child) not in wanted:
                continue
            if type(child) is type(target) and repr(child) == repr(target):
                kept += 1
                continue
            kind = type(child).__name__
            replaced[kind] = replaced.get(kind, 0) + 1
            setattr(parent, child_name, create_activation(name, **kwargs))

    parts = []
    if replaced:
        swaps = ", ".join(f"{n} {kind}" for kind, n in replaced.items())
        parts.append(f"swapped {swaps} -> {target!r}")
    called, kept_calls = _swap_in_forwards(model, name, wanted, target, kwargs)
    parts += called
    kept += kept_calls
    if not any(part.startswith("swapped") for part in parts):
        nothing = (
            f"all {kept} activations already are {target!r}; nothing swapped"
            if kept
            else "found no activation module or call to swap; nothing swapped"
        )
        parts.insert(0, nothing)
    return "activation: " + "; ".join(parts)


def _swap_in_forwards(
    model: nn.Module, name: str, wanted: set[str], target: nn.Module, kwargs: dict[str, object]
) -> tuple[list[str], int]:
    """Swap activation calls in every forward that traces; name those left in the rest.

    Returns the account's parts and how many calls already were the chosen activation.
    """
    kept = 0
    calls: dict[str, int] = {}  # how the call was written -> count
    in_graphs: dict[str, int] = {}  # class -> forwards edited
    left: list[str] = []
    for _, module in graphs.editable_modules(model):
        try:
            graph = graphs.trace(module)
        except graphs.TraceFailure as failure:
            names = {n for k in wanted - {name} for n in (k, f"{k}_")}
            if "sigmoid" in wanted and name != "sigmoid":
                names.add("expit")
            written = graphs.source_calls(module, names)
            note = f"left {', '.join(written)} as they are: {failure}"
            if written and note not in left:
                left.append(note)
            continue
        swapped, still = _swap_calls(module, graph, name, wanted, target, kwargs)
        kept += still
        if swapped:
            graphs.install(module, graph)
            for how, n in swapped.items():
                calls[how] = calls.get(how, 0) + n
            cls = graphs.class_name(module)
            in_graphs[cls] = in_graphs.get(cls, 0) + 1
    parts = []
    if calls:
        total = sum(calls.values())
        written = ", ".join(f"{n} {how}" for how, n in calls.items())
        parts.append(
            f"swapped {written} call{'s' if total > 1 else ''} in "
            f"{graphs.forwards(in_graphs)} -> {target!r} (traced with torch.fx)"
        )
    return [*parts, *left], kept


def _swap_calls(
    module: nn.Module,
    graph: fx.Graph,
    name: str,
    wanted: set[str],
    target: nn.Module,
    kwargs: dict[str, object],
) -> tuple[dict[str, int], int]:
    """Turn activation calls in `graph` into calls of new `name` modules on `module`.

    Returns {how the call was written: count} for the swapped calls, and how many
    already were the chosen activation.
    """
    swapped: dict[str, int] = {}
    kept = 0
    for node in list(graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        kind = node_kind(module, node)
        if kind is None or kind not in wanted:
            continue
        if _same_as_target(node, kind, name, target):
            kept += 1
            continue
        source = node.args[0] if node.args else node.kwargs.get("input")
        feeder = source.target if isinstance(source, fx.Node) and source.op == "call_module" else ""
        attribute = graphs.fresh_name(module, f"{feeder}_act" if feeder else "act")
        module.add_module(attribute, create_activation(name, **kwargs))
        with graph.inserting_after(node):
            new = graph.call_module(attribute, (source,))
        node.replace_all_uses_with(new)
        if isinstance(source, fx.Node) and _in_place(node):
            # `x.relu_()` changed x itself: code after it that reads x read the activation.
            after = _nodes_after(graph, node)
            source.replace_all_uses_with(
                new,
                delete_user_cb=lambda user, after=after, new=new: user in after and user is not new,
            )
        how = _written(node)
        graph.erase_node(node)
        swapped[how] = swapped.get(how, 0) + 1
    return swapped, kept


def _in_place(node: fx.Node) -> bool:
    return str(getattr(node.target, "__name__", node.target)).endswith("_") or bool(
        node.kwargs.get("inplace", False)
    )


def _nodes_after(graph: fx.Graph, node: fx.Node) -> set[fx.Node]:
    nodes = list(graph.nodes)
    return set(nodes[nodes.index(node) + 1 :])
