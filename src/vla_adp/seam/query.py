"""One query through a model family and a pruner: begin → forward → end.

    query ──► pruner.begin(query) ──► hooks ──► model(inputs, pruner, hooks) ──► output
                                                   │ pruner.at_layer(ctx) before each hook layer
    output.actions ──► actions(·) (e.g. un-normalise) ──► pruner.end(QueryOutcome) ──► report

The policy, the latency benchmark and LightVLA training all go through :func:`run_query`; the batched
policy path (one forward for several episodes) uses its two halves, :func:`begin_query` and
:func:`end_query`, around :func:`vla_adp.model.batched.forward_rows`.

A model family provides ``model.layout(inputs)`` (the unpruned :class:`~vla_adp.seam.layout.TokenLayout`)
and ``model(inputs, pruner, hooks, timer=..., **options)`` returning an output with ``actions``
(B, chunk, dim), ``layout`` (final) and ``keep_sets``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from vla_adp.seam.context import Pruner, Query, QueryOutcome
from vla_adp.seam.keep import KeepSet
from vla_adp.seam.layout import TokenLayout
from vla_adp.utils.timing import NullStopwatch


class FamilyOutput(Protocol):
    actions: Tensor
    layout: TokenLayout
    keep_sets: list[KeepSet]


class Family(Protocol):
    """What :func:`run_query` needs of a model family."""

    def layout(self, inputs: Any) -> TokenLayout: ...

    def __call__(self, inputs: Any, pruner: Pruner | None, hooks: frozenset[int], **options) -> FamilyOutput: ...


@dataclass
class QueryResult:
    """One answered query.

    Args:
        output: the family's forward output (normalised actions, final layout, keep sets, ...).
        query: the query as the pruner saw it (its layout filled in).
        actions: what :func:`run_query`'s ``actions`` made of ``output.actions`` (the pruner's
            ``QueryOutcome.actions``).
        report: the pruner's ``end()`` dict (empty without a pruner).
    """

    output: Any
    query: Query
    actions: Any
    report: dict[str, Any] = field(default_factory=dict)


def first_row(actions: Tensor) -> np.ndarray:
    """Batch row 0 of the normalised actions as float numpy (the default outcome actions)."""
    return actions[0].float().cpu().numpy()


def begin_query(model: Family, inputs: Any, pruner: Pruner | None, query: Query,
                timer=NullStopwatch()) -> tuple[Query, frozenset[int]]:
    """The query with its layout filled in from the model, and the layers the pruner asks for."""
    if query.layout is None:
        query = dataclasses.replace(query, layout=model.layout(inputs))
    with timer("gate"):
        hooks = pruner.begin(query) if pruner is not None else frozenset()
    return query, hooks


def end_query(pruner: Pruner | None, output: FamilyOutput, actions: Any, timer=NullStopwatch()) -> dict[str, Any]:
    """The pruner's end-of-query update and report (empty without a pruner)."""
    if pruner is None:
        return {}
    with timer("gate"):
        return pruner.end(QueryOutcome(output.layout, actions, output.keep_sets))


def run_query(model: Family, inputs: Any, pruner: Pruner | None, query: Query,
              actions: Callable[[Tensor], Any] = first_row, timer=NullStopwatch(), **options) -> QueryResult:
    """begin → forward (``options`` go to the model) → ``actions(output.actions)`` → end."""
    query, hooks = begin_query(model, inputs, pruner, query, timer)
    output = model(inputs, pruner, hooks, timer=timer, **options)
    acts = actions(output.actions)
    return QueryResult(output, query, acts, end_query(pruner, output, acts, timer))
