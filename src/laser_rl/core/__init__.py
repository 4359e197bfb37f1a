"""LaSeR mathematics (:mod:`laser_rl.core.laser`). Names the config schema needs live here, importable
without torch, so that loading or printing a config does not load torch."""

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")  # how the policy loss averages
