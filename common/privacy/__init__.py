"""Differential privacy: what fedtext promises about what the global model can reveal.

Two guarantees, chosen with the ``dp`` config key (README, docs/PRIVACY.md):

- ``record``: every client trains with DP-SGD (Opacus: per-example clipping,
  Gaussian noise, Poisson sampling, :mod:`.dpsgd`) and accounts its own
  privacy against its own rows (:mod:`.ledger`). Protects each **row** of each
  client from everyone who sees the model or the updates.
- ``client``: every client clips its whole update, and Gaussian-scale noise
  is added to the sum (:mod:`.distributed`): by the clients, as discrete
  Skellam noise inside secure aggregation, so that the server never sees an
  un-noised sum; or by the server with ``--no-secagg``. Protects each
  **client's whole dataset** from everyone who sees the global model.

:mod:`.accounting` turns either into an (epsilon, delta) with ``dp-accounting``.
This package knows nothing of Flower's server or client.
"""
