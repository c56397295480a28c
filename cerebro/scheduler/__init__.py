"""Model Hopper Parallelism (MOP) as pure logic: events in, hops out.

Each train partition lives on one worker; models hop between workers and train one pass
("hop") on each partition. :class:`Scheduler` decides which hop each idle worker runs next.
It does no I/O and reads no clock: the controller reports what happened (:meth:`~Scheduler.
complete`, :meth:`~Scheduler.requeue`, :meth:`~Scheduler.drop_model`) and asks for work
(:meth:`~Scheduler.assign`, and :meth:`~Scheduler.assign_next` for the hop each busy worker
runs once its current one ends). Its only randomness is its own ``random.Random(seed)``.
Which runnable hop goes first is its :class:`Policy`'s to say.

The modules, one job each: ``_hops`` (what is handed out and reported), ``_progress`` (each
model's epochs and the work left: MOP's epoch rule), ``_scheduler`` (which worker runs what:
the candidate index, greedy choice, augmenting paths, queued hops), ``_policies`` (the
policies, and what a policy may decide), ``_walks`` (the fixed policy's orders).

Example:
    >>> s = Scheduler(["a", "b"], num_epochs=1, train_owner={0: 0, 1: 1}, val_owner={})
    >>> [(x.worker, x.hop.model_id, x.hop.partition) for x in s.assign()]
    [(0, 'b', 0), (1, 'a', 1)]
    >>> s.complete(Hop("a", 0, "train", 1)), s.remaining_hops()
    ([], 3)
"""

from __future__ import annotations

from cerebro.scheduler._hops import Assignment, EpochEnd, Hop, HopKind
from cerebro.scheduler._policies import POLICIES, Board, Policy
from cerebro.scheduler._scheduler import Scheduler
from cerebro.scheduler._walks import WALKS

__all__ = [
    "POLICIES",
    "WALKS",
    "Assignment",
    "Board",
    "EpochEnd",
    "Hop",
    "HopKind",
    "Policy",
    "Scheduler",
]
