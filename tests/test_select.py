"""Selection invariants (Eq. 10–12) as properties, and the reference's quota examples."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vla_adp.pruning.select import select_per_view
from vla_adp.seam.budget import keep_count, view_quotas


def test_keep_counts_reference_and_paper_roundings():
    # Reference code (banker's rounding, docs/reference.md §4): 0.75→384, 0.5→256, 0.35→179, 0.25→128.
    assert [keep_count(512, r) for r in (0.75, 0.5, 0.35, 0.25)] == [384, 256, 179, 128]
    # Paper Tables 5–9 (ceil): 154, 205, 256, 308, 359; Eq. 10 (floor): 153, 204, 256, 307, 358.
    assert [keep_count(512, r, "ceil") for r in (0.3, 0.4, 0.5, 0.6, 0.7)] == [154, 205, 256, 308, 359]
    assert [keep_count(512, r, "floor") for r in (0.3, 0.4, 0.5, 0.6, 0.7)] == [153, 204, 256, 307, 358]
    assert keep_count(3, 0.5) == 2 and keep_count(5, 0.5) == 2  # round-half-even: 1.5→2, 2.5→2
    assert keep_count(512, 0.0001) == 1


def test_reference_split_examples():
    assert view_quotas(384, (256, 256), (0.4, 0.6)) == (154, 230)  # docs/reference.md §4, ratio 0.75
    assert view_quotas(256, (256, 256), (0.4, 0.6)) == (102, 154)
    assert view_quotas(154, (256, 256), (0.4, 0.6)) == (62, 92)
    assert view_quotas(10, (256, 256), None) == (5, 5)
    # 3 views, 2-element split -> [0.4, 0.3, 0.3]: 3.6→4, 2.7→3, 2.7→3 = 10; remove one from the heaviest.
    assert view_quotas(9, (256, 256, 256), (0.4, 0.6)) == (3, 3, 3)



def test_fewer_tokens_than_cameras_is_refused():
    # The reference's remainder loop never ends here (every camera keeps >= 1); refuse with a message.
    with pytest.raises(ValueError, match="cannot keep 1 visual token.*2 cameras.*never ends"):
        view_quotas(1, (256, 256), (0.4, 0.6))


def test_overflow_moves_to_other_views_instead_of_being_lost():
    assert view_quotas(500, (256, 256), (0.1, 0.9)) == (244, 256)


@settings(max_examples=200, deadline=None)
@given(
    views=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    ratio=st.floats(0.01, 1.0),
    weights=st.one_of(st.none(), st.lists(st.floats(0.0, 5.0), min_size=1, max_size=4)),
    rounding=st.sampled_from(["round", "ceil", "floor"]),
    mode=st.sampled_from(["top", "inverse", "random"]),
    seed=st.integers(0, 1000),
)
def test_selection_properties(views, ratio, weights, rounding, mode, seed):
    views = tuple(views)
    if weights is not None and sum(weights) <= 0:
        weights = None
    k = keep_count(sum(views), ratio, rounding)
    assume(k >= len(views))
    quotas = view_quotas(k, views, None if weights is None else tuple(weights))
    assert sum(quotas) == k and all(0 <= q <= v for q, v in zip(quotas, views))
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, sum(views), generator=g)
    keep = select_per_view(scores, views, quotas, mode, g)
    assert keep.visual_index.shape == (2, k) and keep.views == quotas
    for row in range(2):
        idx = keep.visual_index[row]
        assert len(set(idx.tolist())) == k  # no duplicates
        start = 0
        for n, q in zip(views, quotas):
            mine = idx[(idx >= start) & (idx < start + n)]
            assert len(mine) == q and bool((mine[1:] > mine[:-1]).all())  # each view: its quota, in order
            if mode != "random" and q:
                sel = scores[row, mine].min() if mode == "top" else scores[row, mine].max()
                rest = torch.ones(n, dtype=torch.bool)
                rest[mine - start] = False
                if rest.any():
                    others = scores[row, start:start + n][rest]
                    assert (sel >= others.max()) if mode == "top" else (sel <= others.min())
            start += n


def test_score_order_reproduces_reference_single_view_ordering():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    keep = select_per_view(scores, (4,), (3,), "top", order="score")
    assert keep.visual_index.tolist() == [[1, 3, 2]]
    assert select_per_view(scores, (4,), (3,), "top").visual_index.tolist() == [[1, 2, 3]]
