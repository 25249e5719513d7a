"""What servers, clients and simulations share: config, model, data, training, metrics.

Nothing here imports Flower's server or client side: both meet only through the
messages they exchange and through this package.
"""
