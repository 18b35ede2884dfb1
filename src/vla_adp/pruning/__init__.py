"""Visual-token pruning methods on the seam (:mod:`vla_adp.seam`): scoring, selection, the
action-aware gate, and the pruners (:mod:`vla_adp.pruning.registry`)."""
