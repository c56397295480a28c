"""The original Cerebro's ``cerebro.mop`` package, kept for its import path only:
``from cerebro.mop.minibatch_spec import MiniBatchSpec`` (see :mod:`.minibatch_spec`)."""
