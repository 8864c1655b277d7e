"""Traced forward passes: the fixes' view of the code in a model's `forward`.

A user's model often holds its layers as attributes and calls its nonlinearity in
`forward` (`torch.sigmoid(self.fc(x))`). Module swaps cannot see such a call; torch.fx
can. Each module whose `forward` we may edit is traced on its own, with every child
module as a leaf, so the graph holds exactly that method's code: calls to children
(`call_module`), functions (`call_function`) and tensor methods (`call_method`).

An edited graph is installed as the forward of that one module object, through a
subclass made for it (as torch.fx's GraphModule does), so the module keeps its
parameters, its names and its `isinstance`, and a later transform traces the edited
forward rather than the original. Save such a model with `state_dict()`: the made
class is not importable, so `torch.save(model)` of the whole object cannot pickle it.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import textwrap
from collections.abc import Iterator

import torch
import torch.fx as fx
from torch import nn

from gradsweep.errors import first_line
from gradsweep.fixes.layers import is_weight_layer, probe_forward

# Modules whose forward is known and holds no activation call to swap: torch's own
# (nn.Sequential, nn.Linear, ...) and gradsweep's (Residual, Shortcut).
_KNOWN_PREFIXES = ("torch.", "gradsweep.")


class TraceFailure(Exception):
    """A module's forward that torch.fx cannot trace (data-dependent control flow, ...)."""


class _ShallowTracer(fx.Tracer):
    """Traces one module's own forward: every child module is a leaf call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def is_editable(module: nn.Module) -> bool:
    """Whether `module`'s forward is the user's own code, which only a trace can see into."""
    return not type(module).__module__.startswith(_KNOWN_PREFIXES)


def editable_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every module with a forward of its own, outermost first."""
    for name, module in model.named_modules():
        if is_editable(module):
            yield name, module


def trace(module: nn.Module) -> fx.Graph:
    """The graph of `module`'s forward, children as leaves; TraceFailure if it will not trace."""
    try:
        return _ShallowTracer().trace(module)
    except Exception as error:  # fx raises many kinds: TraceError, TypeError, NameError, ...
        raise TraceFailure(
            f"{class_name(module)}.forward does not trace with torch.fx ({first_line(error)[:160]})"
        ) from error


def class_name(module: nn.Module) -> str:
    """The user's class name, also for a module whose forward we installed."""
    return getattr(type(module), "_gradsweep_base", type(module)).__name__


def forwards(counts: dict[str, int]) -> str:
    """Where edits were made, for an account: "DeepSigmoid.forward", "8 Fire forwards"."""
    return ", ".join(
        f"{cls}.forward" if n == 1 else f"{n} {cls} forwards" for cls, n in counts.items()
    )


def install(module: nn.Module, graph: fx.Graph) -> None:
    """Make `graph` the forward of this one `module` object (not of its class)."""
    graph.lint()
    for node in graph.nodes:
        node.type = None  # no annotations: the code is shown to people (`gradsweep show`)
    code = graph.python_code(root_module="self")
    base = getattr(type(module), "_gradsweep_base", type(module))
    filename = f"<gradsweep: traced {base.__qualname__}.forward>"
    # Registered with linecache so that a traceback through it shows the code.
    linecache.cache[filename] = (len(code.src), None, code.src.splitlines(True), filename)
    namespace = dict(code.globals)
    exec(compile(code.src, filename, "exec"), namespace)
    made = type(
        base.__name__,
        (base,),
        {
            "forward": namespace["forward"],
            "_gradsweep_base": base,
            "_gradsweep_source": code.src,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
        },
    )
    module.__class__ = made


def fresh_name(module: nn.Module, base: str) -> str:
    """An attribute name on `module` that is free: `base`, else base_1, base_2, ..."""
    name, index = base.replace(".", "_"), 1
    while hasattr(module, name):
        name = f"{base.replace('.', '_')}_{index}"
        index += 1
    return name


def holds_loose_layers(module: nn.Module) -> bool:
    """Whether `module` holds weight layers that only its own forward can place.

    That is, outside any nn.Sequential (whose order is known) and outside any child
    with a forward of its own: attributes, ModuleList and ModuleDict entries.
    """
    pending = list(module.children())
    while pending:
        child = pending.pop()
        if is_weight_layer(child):
            return True
        if not isinstance(child, nn.Sequential) and not is_editable(child):
            pending.extend(child.children())
    return False


def called_module(root: nn.Module, node: fx.Node) -> nn.Module | None:
    """The module a `call_module` node calls, else None."""
    if node.op != "call_module":
        return None
    return root.get_submodule(str(node.target))


def module_inputs(
    model: nn.Module, sample: torch.Tensor, modules: list[nn.Module]
) -> dict[nn.Module, tuple[tuple, dict]]:
    """The (args, kwargs) each of `modules` receives, at its first call, on `sample`."""
    seen: dict[nn.Module, tuple[tuple, dict]] = {}

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.setdefault(module, (args, kwargs))

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    probe_forward(model, sample, handles)
    return seen


def node_values(
    module: nn.Module, graph: fx.Graph, inputs: tuple[tuple, dict], wanted: set[fx.Node]
) -> dict[fx.Node, object]:
    """The values `wanted` nodes take when `graph` runs on `module`'s recorded inputs."""
    args, kwargs = inputs
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    positional = list(args)
    for placeholder in placeholders[len(args) :]:
        if placeholder.target in kwargs:
            positional.append(kwargs[placeholder.target])
        elif placeholder.args:  # the argument's default value
            positional.append(placeholder.args[0])
    found: dict[fx.Node, object] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            value = super().run_node(n)
            if n in wanted:
                found[n] = value
            return value

    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            _Recorder(module, graph=graph).run(*positional)
    finally:
        module.train(was_training)
    return found


def source_calls(module: nn.Module, names: set[str]) -> list[str]:
    """Calls in the source of `module`'s forward whose function or method is one of `names`.

    For a forward that does not trace: it tells the user which calls were left as they
    are, e.g. ["torch.sigmoid (line 31)", "x.relu (line 33)"].
    """
    forward = type(module).forward
    try:
        lines, first = inspect.getsourcelines(forward)
    except (OSError, TypeError):
        return []
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return []
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == "self":
            continue  # self.relu(x) calls a module, which module swaps handle
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called in names:
            calls.append((node.lineno, f"{ast.unparse(func)} (line {first + node.lineno - 1})"))
    return [text for _, text in sorted(calls)]
