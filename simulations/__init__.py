"""Federations on one machine (Flower's simulation engine on Ray), the centralized
baseline, and the ``fedtext`` command line."""
