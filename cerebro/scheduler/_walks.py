"""The walks of the ``"fixed"`` policy: each model's train order in each epoch, fixed in
advance as a function of (seed, model index, epoch) and the partitions."""

from __future__ import annotations

import random
from collections.abc import Mapping

__all__ = ["WALKS", "base_order", "latin_walk"]

WALKS: tuple[str, ...] = ("partitions", "workers")

# NOTE [ Walks independent of the workers ]
# A model's training is its sequence of train hops (partition order per epoch; rows and
# minibatches inside a hop depend on the seed, the model, the epoch and the partition). With
# walk="partitions" that sequence is a function of (seed, model index, epoch) and the
# partitions alone, so the same fit on 1, 2 or 8 workers (any W <= P) trains the same
# models; only who runs each hop, and when, changes. bench/scheduler_sim.py measures what
# the fixed orders cost against the makespan lower bound for P from W to 4W.
#
# NOTE [ Fixed order ]
# The base order depends on (seed, epoch) only, never on timing, and for walk="partitions"
# not on the workers either. Its rng is seeded from a string of its own, so computing it
# draws nothing from the scheduler's rng. Changing the seed string, or the order of the
# draws below, changes every fixed walk, and fits made before no longer resume.


def base_order(seed: int, epoch: int, train_owner: Mapping[int, int], walk: str) -> list[int]:
    """The base order of ``epoch``: a permutation of the train partitions.

    Args:
        seed: the scheduler's seed.
        epoch: 0-based epoch.
        train_owner: train partition -> worker, in sorted partition order.
        walk: ``"partitions"``: the partitions ``0..P-1`` rotated by a seeded amount;
            ``"workers"``: the walk of fits made before 0.2 (so that they resume), the
            workers in a seeded order and each worker's partitions interleaved round-robin.
    """
    rng = random.Random(f"cerebro.scheduler.fixed:{seed}:{epoch}")
    if walk == "partitions":
        parts = sorted(train_owner)
        r = rng.randrange(len(parts))
        return parts[r:] + parts[:r]
    ws = sorted(set(train_owner.values()))
    rng.shuffle(ws)
    by = {w: [p for p, o in train_owner.items() if o == w] for w in ws}
    for w in ws:
        rng.shuffle(by[w])
    rounds = max(map(len, by.values()))
    return [by[w][r] for r in range(rounds) for w in ws if r < len(by[w])]


def latin_walk(base: list[int], index: int, period: int) -> list[int]:
    """Model ``index``'s walk of ``base``: it starts at offset ``index mod period``.

    Latin square: with ``period`` the number of partitions (or of train workers, for the
    old walk), the first models never collide and the rest follow one of them in lockstep.
    """
    offset = index % period
    return [base[(offset + k) % len(base)] for k in range(len(base))]
