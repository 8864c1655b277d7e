"""Residual shortcuts, and the transform that wraps blocks of a model with them.

A shortcut only helps when its block spans an activation: around a Linear alone,
out = Wx + x is still linear, and the saturating nonlinearity after it starves the
early layers as before (measured: log10 first/last -11.7, accuracy 0.10). So a block
is always weight layer(s) + norms + activation:

- in the model's main nn.Sequential, blocks of its children (Residual modules);
- where the activation is called in forward (`torch.sigmoid(self.fc(x))`), in the
  traced graph of that forward: a Shortcut module adds the block's input to the
  activation's output;
- a module named by the user is wrapped whole; a lone layer whose activation lives
  outside it is widened to layer + activation, or refused with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gradsweep.fixes import graphs
from gradsweep.fixes.activations import is_activation, node_kind
from gradsweep.fixes.layers import is_weight_layer, probe_forward, set_children
from gradsweep.fixes.residual import (
    PLACEMENTS,
    Residual,
    place_blocks,
    projection,
    projections_note,
    shapes_note,
)
from gradsweep.fixes.skip_graphs import residual_in_graphs, traced_runs, widen_in_graph


def _units(children: list[nn.Module]) -> list[tuple[int, int]]:
    """[start, end) spans of hidden units: a weight layer, its norms, its activation.

    Units that follow one another directly form a chain a block may span; anything
    else between them (pooling, flatten, the classifier) is left outside the blocks.
    """
    spans: list[tuple[int, int]] = []
    for start, child in enumerate(children):
        if not is_weight_layer(child):
            continue
        for end in range(start + 1, len(children)):
            if is_weight_layer(children[end]):
                break
            if is_activation(children[end]):
                spans.append((start, end + 1))
                break
    return spans


def _blocks(spans: list[tuple[int, int]], block_size: int) -> list[tuple[int, int]]:
    """Group runs of adjacent unit spans into blocks of `block_size` units."""
    blocks: list[tuple[int, int]] = []
    run: list[tuple[int, int]] = []
    for span in [*spans, None]:
        if span is not None and (not run or run[-1][1] == span[0]):
            run.append(span)
            continue
        for start in range(0, len(run), block_size):
            chunk = run[start : start + block_size]
            blocks.append((chunk[0][0], chunk[-1][1]))
        run = [span] if span is not None else []
    return blocks


def add_residual(
    model: nn.Module,
    sample: torch.Tensor,
    block_size: int = 2,
    placement: str = "all",
    count: int = 3,
    modules: Sequence[str] | None = None,
) -> str:
    """Wrap blocks of `block_size` hidden units (weight layer + norms + activation).

    The blocks come from the model's main nn.Sequential or, where it holds more of
    them, from a forward traced with torch.fx. `sample` is a batch the model accepts:
    one no-grad pass gives each block's input and output shapes, hence identity or
    projection shortcuts (ShapeMismatchError, naming both shapes, where none fits).
    `placement` picks all blocks, or the `count` nearest the input or the output.
    `modules` names submodules to wrap instead (e.g. ["layer1", "layer2"]).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown skip.placement {placement!r}; choose one of {list(PLACEMENTS)}")
    if modules is not None:
        return _wrap_named(model, sample, list(modules))

    stack = _main_sequential(model)
    children = list(stack) if stack is not None else []
    blocks = _blocks(_units(children), block_size)
    traced, failures = traced_runs(model)
    if sum(len(run) for _, _, runs in traced for run in runs) > len(_units(children)):
        # The forwards' own code holds more of the model than any Sequential.
        return residual_in_graphs(model, sample, traced, block_size, placement, count)
    if not blocks:
        notes = "".join(f"; {failure}" for failure in failures)
        return "skip: found no chain of weight layer + activation to wrap; nothing changed" + notes
    chosen = place_blocks(blocks, placement, count)
    assert stack is not None

    # What enters each child (and the stack's output), from one no-grad pass.
    inputs = _child_inputs(model, stack, sample)
    rebuilt: list[nn.Module] = []
    described: list[str] = []
    index = 0
    for start, end in chosen:
        rebuilt.extend(children[index:start])
        body = nn.Sequential(*children[start:end])
        x = inputs[start]
        y = inputs[end]
        shortcut = projection(x, y)
        rebuilt.append(Residual(body, shortcut))
        if not isinstance(shortcut, nn.Identity):
            described.append(f"{tuple(x.shape[1:])}->{tuple(y.shape[1:])}")
        index = end
    rebuilt.extend(children[index:])
    set_children(stack, rebuilt)

    account = f"skip: wrapped {len(chosen)} of {len(blocks)} blocks of {block_size} with shortcuts"
    return account + projections_note(described)


def _wrap_named(model: nn.Module, sample: torch.Tensor, names: list[str]) -> str:
    """Wrap each named submodule with a shortcut; a lone layer is widened to its activation."""
    targets = []
    for name in names:
        try:
            targets.append((name, model.get_submodule(name)))
        except AttributeError:
            raise ValueError(
                f"skip.modules: {type(model).__name__} has no submodule {name!r}"
            ) from None
    done: list[str] = []
    refused: list[str] = []
    for name, target in targets:
        kind = "layer" if is_weight_layer(target) else "module"
        if kind == "module" and _spans_activation(target):
            done.append(_wrap_whole(model, sample, name, target))
            continue
        # A lone layer (or a module with no activation in it): a shortcut around it
        # alone spans no activation, so find the activation it feeds.
        widened = _widen_in_sequential(model, sample, name, target)
        reason = None
        if widened is None:
            widened, reason = widen_in_graph(model, sample, name, target)
        if widened is not None:
            done.append(widened)
        else:
            refused.append(
                f"{name} left as it is: a shortcut around it alone would span no activation, "
                f"and {reason or 'no traced forward shows an activation it feeds'}; "
                "name a module that holds both"
            )
    account = f"skip: wrapped {len(done)} of {len(targets)} named modules with shortcuts"
    if done:
        account += ": " + ", ".join(done)
    return account + "".join(f"; {note}" for note in refused)


def _spans_activation(module: nn.Module) -> bool:
    """Whether an activation runs inside `module`: a module, or a call in a traced forward."""
    if any(is_activation(m) for m in module.modules()):
        return True
    for _, inner in graphs.editable_modules(module):
        try:
            graph = graphs.trace(inner)
        except graphs.TraceFailure:
            return True  # cannot see inside: trust the user's choice
        if any(node_kind(inner, node) is not None for node in graph.nodes):
            return True
    return False


def _parent_of(model: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if child is target:
                return parent, child_name
    raise ValueError(f"{type(target).__name__} is not a child of any module of the model")


def _wrap_whole(model: nn.Module, sample: torch.Tensor, name: str, target: nn.Module) -> str:
    parent, child_name = _parent_of(model, target)
    x, y = _module_io(model, sample, target)
    shortcut = projection(x, y)
    setattr(parent, child_name, Residual(target, shortcut))
    how = "identity" if isinstance(shortcut, nn.Identity) else f"projection {shapes_note(x, y)}"
    return f"{name} ({how})"


def _module_io(model: nn.Module, sample: torch.Tensor, target: nn.Module):
    """The tensor entering `target` and the one leaving it, at its first call on `sample`."""
    seen: list[tuple[object, object]] = []
    hook = target.register_forward_hook(lambda _m, args, out: seen.append((args, out)))
    probe_forward(model, sample, [hook])
    if not seen:
        raise ValueError(f"{type(target).__name__} is not called when the model runs")
    args, out = seen[0]
    if len(args) != 1 or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
        raise ValueError(
            f"{type(target).__name__} takes or returns more than one tensor; a shortcut "
            "needs one tensor in and one out"
        )
    return args[0], out


def _widen_in_sequential(
    model: nn.Module, sample: torch.Tensor, name: str, target: nn.Module
) -> str | None:
    """Wrap layer + norms + activation where the layer sits in an nn.Sequential."""
    parent, _ = _parent_of(model, target)
    if not isinstance(parent, nn.Sequential):
        return None
    children = list(parent)
    index = next(i for i, child in enumerate(children) if child is target)
    span = next(((s, e) for s, e in _units(children) if s == index), None)
    if span is None:
        return None
    start, end = span
    inputs = _child_inputs(model, parent, sample)
    shortcut = projection(inputs[start], inputs[end])
    wrapped = Residual(nn.Sequential(*children[start:end]), shortcut)
    set_children(parent, [*children[:start], wrapped, *children[end:]])
    kinds = " + ".join(type(c).__name__ for c in children[start:end])
    how = (
        "identity"
        if isinstance(shortcut, nn.Identity)
        else f"projection {shapes_note(inputs[start], inputs[end])}"
    )
    return f"{name} widened to {kinds} ({how})"


def _main_sequential(model: nn.Module) -> nn.Sequential | None:
    """The model's longest nn.Sequential: the stack that holds the hidden layers."""
    stacks = [m for m in model.modules() if isinstance(m, nn.Sequential)]
    return max(stacks, key=len) if stacks else None


def _child_inputs(model: nn.Module, stack: nn.Sequential, sample: torch.Tensor) -> list:
    """The tensor entering each child of `stack` when `model` runs on `sample`, then its output."""
    captured: list[torch.Tensor] = []
    handle = stack.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    was_training = model.training
    try:
        model.eval()  # the probe must not move BatchNorm's running statistics
        with torch.no_grad():
            model(sample)
            x = captured[0]
            inputs = []
            for child in stack:
                inputs.append(x)
                x = child(x)
            inputs.append(x)
    finally:
        model.train(was_training)
        handle.remove()
    return inputs
