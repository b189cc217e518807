"""fedcore: privacy-preserving federated training across banks and hospitals."""

__version__ = "0.1.0"
