"""Scheduling: which sites train each round, how much work each gets, and the simulator to test it.

Participant selection policies (random, round-robin, least-loaded, Oort, fedcore) from a
registry; a filter -> score framework with plugins; the predictive allocator with round-duration
forecasters (:mod:`scheduling.predictor`); FedNova aggregation for unequal local work;
scale/migrate policies (:mod:`scheduling.policy`); per-site telemetry history; and a
trace-driven cluster simulator (:mod:`scheduling.sim`) with the training ground that fits the
learned parts in it.
"""
