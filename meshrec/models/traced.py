"""A module's method replayed from TorchScript graphs, traced once per input signature.

At batch 1 a forward of the reconstruction network is ~1,000 small tensor operations, and the
Python around them (module calls, argument handling, dataclasses) costs about as much as the
operations themselves. A graph traced and frozen for one input signature (``torch.jit.trace`` +
``torch.jit.freeze``: no C++ compiler needed, unlike ``torch.compile`` on a CPU) replays the same
operations without that Python: a batch-1 forward in ~0.6 of the time (docs/benchmarks.md).
TorchScript is deprecated upstream in favour of ``torch.compile`` and ``torch.export``; torch is
pinned here (pyproject.toml), ``torch.export``'s graph module ran slower than eager here, and the
eager method stays the reference and the fallback.

A traced graph fixes every Python decision made while tracing, so a graph is used only for the
signature it was traced with: the inputs' structure (which are None), shapes, dtypes and devices,
and the static keyword arguments. A traced method must therefore make no decision on the values
in its tensors (those belong in static arguments, like the stem's ``any_left``, or outside it,
like the gate's exits); tests compare the graphs with the eager methods on other inputs than
those they were traced with. Where tracing fails the method runs eagerly, with one warning.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

MAX_GRAPHS = 16
TRACE_AFTER = 2


def flatten(value: Any, leaves: list[torch.Tensor]) -> Any:
    """The structure of ``value`` (tensors, None, tuples, lists and dataclasses of them), its
    tensors appended to ``leaves`` in order; :func:`unflatten` rebuilds ``value``."""
    if isinstance(value, torch.Tensor):
        leaves.append(value)
        return torch.Tensor
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return type(value), tuple(flatten(item, leaves) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return type(value), tuple(f.name for f in fields), tuple(flatten(getattr(value, f.name), leaves) for f in fields)
    raise TypeError(f"cannot trace a value of type {type(value).__name__}: tensors, None, tuples, lists and dataclasses only")


def unflatten(structure: Any, leaves: list[torch.Tensor], start: int = 0) -> tuple[Any, int]:
    """``(value, next index into leaves)``: the inverse of :func:`flatten`."""
    if structure is torch.Tensor:
        return leaves[start], start + 1
    if structure is None:
        return None, start
    kind = structure[0]
    if kind in (tuple, list):
        items = []
        for item in structure[1]:
            value, start = unflatten(item, leaves, start)
            items.append(value)
        return kind(items), start
    names, values = structure[1], {}
    for name, item in zip(names, structure[2]):
        values[name], start = unflatten(item, leaves, start)
    return kind(**values), start


def _padded(leaves: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """``leaves`` ``(B, ...)`` with their last row repeated up to ``batch`` rows."""
    if not leaves or leaves[0].shape[0] == batch:
        return leaves
    rows = torch.arange(batch, device=leaves[0].device).clamp_max(leaves[0].shape[0] - 1)
    return [leaf.index_select(0, rows) for leaf in leaves]


class _Call(nn.Module):
    """``owner.<method>`` as a module over flat tensors, for tracing (``owner`` is a submodule so
    that freezing folds its weights into the graph)."""

    def __init__(self, owner: nn.Module, method: str, structure: Any, static: dict) -> None:
        super().__init__()
        self.owner = owner
        self.method = method
        self.structure = structure
        self.static = static
        self.output_structure = None

    def forward(self, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args, _ = unflatten(self.structure, list(leaves))
        result = getattr(self.owner, self.method)(*args, **self.static)
        outputs: list[torch.Tensor] = []
        self.output_structure = flatten(result, outputs)
        return tuple(outputs)


@dataclasses.dataclass
class _Graph:
    graph: torch.jit.ScriptModule
    output_structure: Any


class TracedMethod:
    """``owner.<method>(*args, **static)`` replayed from a graph traced for each signature that
    recurs.

    Args:
        owner: a module in eval mode; its weights are frozen into the graphs, so :meth:`clear`
            them when its weights, device or dtype change.
        method: the name of a method of ``owner`` whose positional arguments are tensors, None,
            or tuples / dataclasses of them, and whose result is the same kind of value.
        pad_batch: every input tensor is ``(B, ...)`` with the same B; pad B up to a power of two
            (repeating the last row) and cut the outputs back, so that sub-batches of any size
            share a few graphs (the gate's passes run on the samples still inside).
        trace_after: calls of one signature that run eagerly before it is traced: tracing costs
            about a hundred batch-1 forwards' worth of time, which a one-off call never earns back.
        max_graphs: signatures remembered, least recently used dropped.
    """

    def __init__(
        self, owner: nn.Module, method: str, pad_batch: bool = False, trace_after: int = TRACE_AFTER, max_graphs: int = MAX_GRAPHS
    ) -> None:
        self.owner = owner
        self.method = method
        self.pad_batch = pad_batch
        self.trace_after = trace_after
        self.max_graphs = max_graphs
        # per signature: eager calls so far (int), its graph, or None where tracing failed
        self.graphs: OrderedDict[Any, int | _Graph | None] = OrderedDict()

    def clear(self) -> None:
        self.graphs.clear()

    def __reduce__(self):
        # graphs hold the weights of the owner they were traced from: a copy (deepcopy, pickle)
        # traces its own
        return TracedMethod, (self.owner, self.method, self.pad_batch, self.trace_after, self.max_graphs)

    def __call__(self, *args: Any, **static: Any) -> Any:
        leaves: list[torch.Tensor] = []
        structure = flatten(args, leaves)
        batch = padded = leaves[0].shape[0] if leaves else 0
        if self.pad_batch:
            padded = 1 << max(batch - 1, 0).bit_length()
        key = (
            structure,
            tuple(((padded, *leaf.shape[1:]) if self.pad_batch else leaf.shape, leaf.dtype, leaf.device) for leaf in leaves),
            tuple(sorted(static.items())),
        )
        entry = self.graphs.get(key, 0)
        if isinstance(entry, int):
            entry += 1
            if entry > self.trace_after:
                entry = self._trace(structure, _padded(leaves, padded), static)
        self.graphs[key] = entry
        self.graphs.move_to_end(key)
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        if not isinstance(entry, _Graph):
            return getattr(self.owner, self.method)(*args, **static)
        outputs = entry.graph(*_padded(leaves, padded))
        if padded != batch:
            outputs = [output[:batch] for output in outputs]
        return unflatten(entry.output_structure, list(outputs))[0]

    def _trace(self, structure: Any, leaves: list[torch.Tensor], static: dict) -> _Graph | None:
        call = _Call(self.owner, self.method, structure, static).eval()
        # the tracer warns at every Python value it reads from a tensor, shapes included (they
        # are part of the key); torch.jit warns that it is deprecated
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                return _Graph(torch.jit.freeze(torch.jit.trace(call, tuple(leaves), check_trace=False)), call.output_structure)
            except Exception as error:  # noqa: BLE001 - any failure means: run eagerly
                problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        warnings.warn(
            f"meshrec: {type(self.owner).__name__}.{self.method} runs eagerly for these inputs (slower, same "
            f"results): tracing it failed with {problem}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
