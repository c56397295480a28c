"""What a worker process does: set up once, then run hops on the partitions it holds.

A hop = load the model's state, run the user's ``train`` (or ``valtest``) over every
minibatch of one local partition, save the new state atomically, and return the
per-minibatch metrics. These functions run inside a worker process (see
``engine/_process.py``); the engine calls them with the worker's ``state`` dict.

The modules, one job each: ``_setup`` (a worker's set-up and the dispatch of each
``HopTask``: where what differs between workers goes), ``_hop`` (the minibatch loop of one
hop: its kinds, metrics, divergence), ``_checkpoint`` (what a checkpoint holds, its atomic
write, building a model from it: NOTE [ model state travels whole ], NOTE [ atomic
checkpoints ]).
"""

from __future__ import annotations

from cerebro.worker._checkpoint import save_checkpoint, seed_torch
from cerebro.worker._setup import run_hop, setup_worker

__all__ = ["run_hop", "save_checkpoint", "seed_torch", "setup_worker"]
