"""Shortcuts placed in traced forwards, where a model calls its activations in `forward`
(`torch.sigmoid(self.fc(x))`): a unit is the node calling a weight layer and the activation node
that ends it, and a Shortcut module adds a block's input to its last activation's output."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from gradsweep.fixes import graphs
from gradsweep.fixes.activations import describe, node_kind
from gradsweep.fixes.layers import is_weight_layer
from gradsweep.fixes.residual import Shortcut, place_blocks, projection, projections_note


def residual_in_graphs(
    model: nn.Module,
    sample: torch.Tensor,
    traced: list,
    block_size: int,
    placement: str,
    count: int,
) -> str:
    """Shortcuts in traced forwards, blocks taken in the order a forward pass meets them."""
    order = graphs.module_inputs(model, sample, [module for module, _, _ in traced])
    called = list(order)
    traced.sort(key=lambda item: called.index(item[0]) if item[0] in order else len(called))
    blocks = [
        (module, run[start], run[min(start + block_size, len(run)) - 1])
        for module, _, runs in traced
        for run in runs
        for start in range(0, len(run), block_size)
    ]
    chosen = place_blocks(blocks, placement, count)
    described: list[str] = []
    where: dict[str, int] = {}
    for module, graph, _ in traced:
        mine = [(first, last) for owner, first, last in chosen if owner is module]
        if mine:
            described += _shortcuts_in_graph(module, graph, order.get(module), mine)
            name = graphs.class_name(module)
            where[name] = where.get(name, 0) + 1
    account = (
        f"skip: wrapped {len(chosen)} of {len(blocks)} blocks of {block_size} with shortcuts "
        f"in {graphs.forwards(where)} (traced with torch.fx; each block spans its layers and "
        "their activations)"
    )
    return account + projections_note(described)


# A unit in a traced graph: the node calling a weight layer, and the activation node
# that ends it (the layer's output reaches it through norms or dropout only).
Unit = tuple[fx.Node, fx.Node]


def _unit_end(root: nn.Module, node: fx.Node) -> fx.Node | None:
    """The activation node that `node`'s output feeds through single-use layers, if any."""
    current = node
    while len(current.users) == 1:
        (user,) = current.users
        if node_kind(root, user) is not None:
            return user
        module = graphs.called_module(root, user)
        passes = module is not None and not is_weight_layer(module) and user.args == (current,)
        if not passes or graphs.is_editable(module):
            return None
        current = user
    return None


def _graph_runs(root: nn.Module, graph: fx.Graph) -> list[list[Unit]]:
    """Runs of units in forward order, each feeding the next directly."""
    runs: list[list[Unit]] = []
    for node in graph.nodes:
        layer = graphs.called_module(root, node)
        if layer is None or not is_weight_layer(layer):
            continue
        if not node.args or not isinstance(node.args[0], fx.Node):
            continue
        end = _unit_end(root, node)
        if end is None:
            continue
        previous = runs[-1][-1][1] if runs else None
        if previous is node.args[0] and len(previous.users) == 1:
            runs[-1].append((node, end))
        else:
            runs.append([(node, end)])
    return runs


def traced_runs(model: nn.Module):
    """[(module, graph, runs)] for each traced forward holding units, and trace failures."""
    traced = []
    failures: list[str] = []
    for _, module in graphs.editable_modules(model):
        try:
            graph = graphs.trace(module)
        except graphs.TraceFailure as failure:
            if graphs.holds_loose_layers(module):
                failures.append(str(failure))
            continue
        runs = _graph_runs(module, graph)
        if runs:
            traced.append((module, graph, runs))
    return traced, failures


def _shortcuts_in_graph(
    module: nn.Module,
    graph: fx.Graph,
    inputs: tuple[tuple, dict] | None,
    blocks: list[tuple[Unit, Unit]],
) -> list[str]:
    """Add a Shortcut from each block's input to its last activation; install the graph.

    `inputs` are the (args, kwargs) `module` received on the sample: they size the
    projections.
    """
    if inputs is None:
        raise ValueError(f"{graphs.class_name(module)} is not called when the model runs")
    ends = [(first[0].args[0], last[1]) for first, last in blocks]
    values = graphs.node_values(module, graph, inputs, {n for pair in ends for n in pair})
    described = []
    for (first, _), (x_node, y_node) in zip(blocks, ends, strict=True):
        x, y = values[x_node], values[y_node]
        # Wired to what enters the block now: an earlier shortcut may have replaced
        # its input (same shape, so the recorded values still size the projection).
        x_node = first[0].args[0]
        shortcut = projection(x, y)
        attribute = graphs.fresh_name(module, f"{first[0].target}_shortcut")
        module.add_module(attribute, Shortcut(shortcut))
        with graph.inserting_after(y_node):
            add = graph.call_module(attribute, (y_node, x_node))
        y_node.replace_all_uses_with(add, delete_user_cb=lambda use, add=add: use is not add)
        if not isinstance(shortcut, nn.Identity):
            described.append(f"{tuple(x.shape[1:])}->{tuple(y.shape[1:])}")
    graphs.install(module, graph)
    return described


def widen_in_graph(
    model: nn.Module, sample: torch.Tensor, name: str, target: nn.Module
) -> tuple[str | None, str | None]:
    """Place the shortcut around layer + activation in the forward that calls the layer.

    Returns (the account, None) when placed, else (None, why not, if known).
    """
    reason = None
    for _, module in graphs.editable_modules(model):
        try:
            graph = graphs.trace(module)
        except graphs.TraceFailure as failure:
            reason = str(failure)
            continue
        for node in graph.nodes:
            if graphs.called_module(module, node) is not target:
                continue
            end = _unit_end(module, node)
            if end is None or not node.args or not isinstance(node.args[0], fx.Node):
                return None, f"{graphs.class_name(module)}.forward uses its output otherwise"
            inputs = graphs.module_inputs(model, sample, [module]).get(module)
            described = _shortcuts_in_graph(module, graph, inputs, [((node, end), (node, end))])
            how = f"projection {described[0]}" if described else "identity"
            return (
                f"{name} + its {describe(module, end)} in {graphs.class_name(module)}.forward "
                f"(traced with torch.fx; {how})"
            ), None
    return None, reason
