"""Deployment helpers for fedtext: certificate and key generation (``deploy.certs``).

The container, Compose and Kubernetes files live beside this package; see
``deploy/README.md``.
"""
