"""Closed-loop environments behind one small protocol (:class:`vla_adp.envs.base.Env`)."""
