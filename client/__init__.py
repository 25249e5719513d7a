"""The data holder's side: the Flower ClientApp and the ``fedtext client`` command."""
