"""Normalization layers by name, and the transform that inserts them into a model.

A norm goes after each Linear/conv that feeds an activation and before that
activation: Linear -> Norm -> activation. What each name means:

- batch: BatchNorm1d after Linear, BatchNorm2d after conv.
- layer: LayerNorm over the features after Linear. After conv, GroupNorm with one
  group: each sample is normalized over all its channels and positions, with a
  per-channel scale and shift. It is LayerNorm over (C, H, W) without tying the
  layer to one image size.
- group: GroupNorm(num_groups, channels); num_groups must divide every width.

Layers inside an nn.Sequential get their norm inside it. Layers held as attributes,
whose activation is called in forward (`torch.sigmoid(self.fc(x))`), get theirs in
the traced forward: a new module `fc_norm` registered beside the layer, called
between the two. Existing parameter names do not change.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from gradsweep.fixes import graphs
from gradsweep.fixes.activations import is_activation, node_kind
from gradsweep.fixes.layers import is_weight_layer, out_features, set_children

NORMS = ("batch", "layer", "group")


def create_norm(name: str, num_features: int, spatial: bool, num_groups: int = 8) -> nn.Module:
    """The norm `name` for a layer producing `num_features` (channels if `spatial`)."""
    if name == "batch":
        return nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)
    if name == "layer":
        return nn.GroupNorm(1, num_features) if spatial else nn.LayerNorm(num_features)
    if name == "group":
        if num_features % num_groups:
            raise ValueError(
                f"norm.num_groups={num_groups} does not divide a layer of width "
                f"{num_features}; pick a divisor of {num_features}"
            )
        return nn.GroupNorm(num_groups, num_features)
    raise ValueError(f"unknown norm {name!r}; choose one of {list(NORMS)}")


def insert_norms(model: nn.Module, name: str, num_groups: int = 8) -> str:
    """Insert a `name` norm between each weight layer and the activation it feeds.

    Looks inside every nn.Sequential of the model, nested or not, for a weight layer
    directly followed by an activation; and, in each forward that traces with
    torch.fx, for a weight layer whose only use is an activation module or call.
    Returns an account of the change.
    """
    inserted: dict[str, int] = {}
    for container in list(model.modules()):
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container)
        rebuilt: list[nn.Module] = []
        for index, child in enumerate(children):
            rebuilt.append(child)
            feeds_activation = index + 1 < len(children) and is_activation(children[index + 1])
            if is_weight_layer(child) and feeds_activation:
                spatial = not isinstance(child, nn.Linear)
                norm = create_norm(name, out_features(child), spatial, num_groups)
                inserted[type(norm).__name__] = inserted.get(type(norm).__name__, 0) + 1
                rebuilt.append(norm)
        if len(rebuilt) != len(children):
            set_children(container, rebuilt)

    notes: list[str] = []
    in_graphs: dict[str, int] = {}  # class -> forwards edited
    total = 0
    for _, module in graphs.editable_modules(model):
        try:
            graph = graphs.trace(module)
        except graphs.TraceFailure as failure:
            note = f"layers called in it got no norm: {failure}"
            if graphs.holds_loose_layers(module) and note not in notes:
                notes.append(note)
            continue
        added = _insert_in_graph(module, graph, name, num_groups)
        if added:
            graphs.install(module, graph)
            for kind, n in added.items():
                inserted[kind] = inserted.get(kind, 0) + n
            total += sum(added.values())
            cls = graphs.class_name(module)
            in_graphs[cls] = in_graphs.get(cls, 0) + 1
    if in_graphs:
        where = graphs.forwards(in_graphs)
        notes.insert(0, f"{total} of them in {where} (traced with torch.fx)")
    if not inserted:
        account = "norm: found no weight layer directly followed by an activation; nothing inserted"
    else:
        counts = ", ".join(f"{n} {kind}" for kind, n in inserted.items())
        account = f"norm: inserted {counts} between weight layers and their activations"
    return account + "".join(f"; {note}" for note in notes)


def _insert_in_graph(module: nn.Module, graph: fx.Graph, name: str, num_groups: int) -> dict:
    """Norms between each called weight layer and the activation that is its only use."""
    added: dict[str, int] = {}
    for node in list(graph.nodes):
        layer = graphs.called_module(module, node)
        if layer is None or not is_weight_layer(layer) or len(node.users) != 1:
            continue
        (user,) = node.users
        if node_kind(module, user) is None:
            continue
        spatial = not isinstance(layer, nn.Linear)
        norm = create_norm(name, out_features(layer), spatial, num_groups)
        attribute = graphs.fresh_name(module, f"{node.target}_norm")
        module.add_module(attribute, norm)
        with graph.inserting_after(node):
            new = graph.call_module(attribute, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda use, new=new: use is not new)
        added[type(norm).__name__] = added.get(type(norm).__name__, 0) + 1
    return added
