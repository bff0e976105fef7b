import numpy as np
import pytest

from pid_export.errors import ConfigError
from pid_export.reader import Chunk
from pid_export.selection import CutFlow, Selections, select, split_keys, stratified_split


def _chunk(x, tpc=None, its=None):
    n = len(x)
    return Chunk(x=x, pdg=None, tpc_ncls=tpc, its_ncls=its, file_index=0, row=np.arange(n),
                 entry=np.arange(n), source="t", folder="")


def test_each_cut_and_its_count():
    x = np.zeros((6, 22), np.float32)
    x[:, 0] = [0.5, 0.5, 2.0, 2.0, 0.5, 5.0]
    x[:, 1] = [0.0, 0.85, 0.0, 0.0, 0.0, 0.0]
    x[:, 18] = [0.0, 0.0, 0.2, 0.0, 0.0, 0.0]
    x[:, 19] = [0.0, 0.0, 0.0, 0.13, 0.0, 0.0]
    tpc = np.array([100, 100, 100, 100, 60, 100])
    its = np.array([7, 7, 7, 7, 7, 2])
    flow = CutFlow()
    keep = select(_chunk(x, tpc, its), Selections(), "full", flow)
    assert keep.tolist() == [True, False, False, False, False, False]
    assert list(flow.counts.values()) == [5, 4, 3, 2, 1]
    flow = CutFlow()
    keep = select(_chunk(x, tpc, its), Selections.none(), "0-1", flow)
    assert keep.tolist() == [True, True, False, False, True, False]


def test_missing_inputs_skip_the_cut_and_say_so():
    x = np.zeros((3, 22), np.float32)
    x[:, 18:20] = np.nan
    flow = CutFlow()
    keep = select(_chunk(x), Selections(), "full", flow)
    assert keep.all()
    assert len(flow.skipped) == 4


def test_unknown_range():
    with pytest.raises(ConfigError, match="0-2"):
        select(_chunk(np.zeros((1, 22), np.float32)), Selections(), "0-2", CutFlow())


def test_split_is_stratified_exact_and_chunking_independent():
    rng = np.random.default_rng(0)
    y = rng.choice(4, size=10_000, p=[0.85, 0.1, 0.04, 0.01])
    rows = np.arange(len(y))
    keys = split_keys(231, np.zeros(len(y)), rows)
    part = stratified_split(y, keys)
    for c in range(4):
        n = (y == c).sum()
        assert (part[y == c] == 2).sum() == round(0.2 * n)
        assert (part[y == c] == 1).sum() == round(0.1 * n)
    # keys computed in pieces are the same
    pieces = np.concatenate([split_keys(231, np.zeros(k.stop - k.start), rows[k])
                             for k in (slice(0, 3333), slice(3333, 10_000))])
    np.testing.assert_array_equal(pieces, keys)
    # another seed gives another split
    other = stratified_split(y, split_keys(232, np.zeros(len(y)), rows))
    assert (other != part).any()
    assert (keys >= 0).all() and (keys < 1).all()
