"""The coordinator's side: the Flower ServerApp and the ``fedtext server`` command."""
