"""Stopping together: a signal on any rank stops every rank after the same step, read back lazily."""
import threading

import torch

from synthgen.train.loop import StopAgreement


class _Ranks:
    """An all-reduce (max) between threads standing in for ranks."""

    def __init__(self, world):
        self.barrier, self.values, self.world = threading.Barrier(world), {}, world

    def reduce_for(self, rank):
        def reduce(t):
            self.values[rank] = float(t[0])
            self.barrier.wait()
            t.fill_(max(self.values.values()))
            self.barrier.wait()
        return reduce


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step():
    world, signalled_at, lag = 3, 4, 2
    ranks, answers = _Ranks(world), {}

    def run(rank):
        agree = StopAgreement(world, torch.device("cpu"), lag=lag, reduce=ranks.reduce_for(rank))
        # rank 1 is signalled during step 4 (its flag stays set); the others never are
        answers[rank] = [agree(rank == 1 and step >= signalled_at) for step in range(10)]
    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    expected = [step >= signalled_at + lag for step in range(10)]
    assert answers == {r: expected for r in range(world)}


def test_one_rank_stops_at_once():
    agree = StopAgreement(1, torch.device("cpu"))
    assert [agree(s >= 2) for s in range(4)] == [False, False, True, True]
