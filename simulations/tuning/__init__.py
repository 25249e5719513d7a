"""``fedtext tune``: hyperparameter search over federated simulations (Optuna).

- ``space``: the search space (flags, TOML, or the default), checked against the config;
- ``trials``: one trial, a federated simulation or the centralized baseline, round by round;
- ``study``: the study's flow, storage, resume and pruning;
- ``report``: the trials table, plots, ``best.toml`` and the best trial's test figures.
"""
