"""Models trained by the federation."""
