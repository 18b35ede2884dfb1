"""The seam between a model family and the pruning methods.

* :mod:`~vla_adp.seam.layout`: where BOS, visual, proprio, prompt and action tokens sit (``TokenLayout``).
* :mod:`~vla_adp.seam.keep`: which visual tokens stay and how the shorter sequence is numbered (``KeepSet``).
* :mod:`~vla_adp.seam.decoder`: the decoder's shape and per-layer accessors a family gives (``Decoder``).
* :mod:`~vla_adp.seam.context`: ``Query``, ``LayerContext``, ``QueryOutcome`` and the ``Pruner`` protocol.
* :mod:`~vla_adp.seam.query`: ``run_query`` (begin → forward → end), used by every caller.
* :mod:`~vla_adp.seam.flops`: the decoder FLOPs arithmetic on a ``DecoderShape``.

It imports nothing of vla-adp but ``utils``; model families and pruners import it.
"""
