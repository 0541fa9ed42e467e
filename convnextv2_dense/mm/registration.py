"""Register the backbone and the optimizer constructor in every installed mm package's registries."""
from __future__ import annotations


def register_all() -> None:
    """Placeholder until the adapters land."""
