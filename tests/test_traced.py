"""meshrec.models.traced: a module's method replayed from graphs traced per input signature."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from meshrec.models.traced import TracedMethod, _Graph, flatten, unflatten


@dataclass
class Pair:
    first: torch.Tensor
    second: tuple[torch.Tensor, ...] | None


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls = 0

    def step(self, pair: Pair, scale: float = 1.0) -> Pair:
        self.calls += 1  # counts eager runs (a replayed graph runs no Python)
        extra = pair.second[0] if pair.second is not None else torch.zeros_like(pair.first)
        out = self.linear(pair.first + extra) * scale
        return Pair(out, (out.sum(-1), out.mean(-1)))

    def broken(self, x: torch.Tensor) -> int:
        return 3


def test_flatten_and_unflatten_round_trip():
    value = (Pair(torch.ones(2), (torch.zeros(1), torch.ones(3))), None, [torch.full((2,), 2.0)])
    leaves: list[torch.Tensor] = []
    structure = flatten(value, leaves)
    assert len(leaves) == 4
    rebuilt, used = unflatten(structure, leaves)
    assert used == 4 and rebuilt[1] is None and isinstance(rebuilt[2], list)
    assert rebuilt[0].second[1] is leaves[2] and rebuilt[2][0] is leaves[3]
    with pytest.raises(TypeError, match="cannot trace a value of type str"):
        flatten(("text",), [])


def test_graphs_replace_the_method_once_a_signature_recurs():
    torch.manual_seed(0)
    toy = Toy().eval()
    traced = TracedMethod(toy, "step", trace_after=2)
    inputs = [Pair(torch.randn(5, 4), (torch.randn(5, 4),)) for _ in range(4)]
    with torch.no_grad():
        results = [traced(pair, scale=2.0) for pair in inputs]
        expected = [toy.step(pair, scale=2.0) for pair in inputs]
    # two eager calls, the trace itself, then the graph (no Python) for the fourth
    assert toy.calls == 3 + len(inputs)
    for ours, theirs in zip(results, expected):
        torch.testing.assert_close(ours.first, theirs.first)
        torch.testing.assert_close(ours.second[1], theirs.second[1])
    (entry,) = traced.graphs.values()
    assert isinstance(entry, _Graph)
    # another static argument or structure is another signature
    with torch.no_grad():
        traced(inputs[0], scale=3.0)
        traced(Pair(inputs[0].first, None))
    assert len(traced.graphs) == 3
    traced.clear()
    assert not traced.graphs


def test_padded_sub_batches_share_a_graph():
    torch.manual_seed(0)
    toy = Toy().eval()
    traced = TracedMethod(toy, "step", pad_batch=True, trace_after=0)
    with torch.no_grad():
        for batch in (3, 4, 3, 1):
            pair = Pair(torch.randn(batch, 4), None)
            result = traced(pair)
            assert result.first.shape == (batch, 3)
            torch.testing.assert_close(result.first, toy.step(pair).first)
    assert len(traced.graphs) == 2  # batches 3 and 4 share the graph for 4; batch 1 has its own


def test_a_method_that_cannot_be_traced_runs_eagerly_with_a_warning():
    toy = Toy().eval()
    traced = TracedMethod(toy, "broken", trace_after=0)
    with pytest.warns(RuntimeWarning, match="Toy.broken runs eagerly.*cannot trace a value of type int"):
        assert traced(torch.ones(2, 4)) == 3
    assert traced(torch.ones(2, 4)) == 3  # warned once per signature
