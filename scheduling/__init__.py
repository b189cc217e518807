"""Scheduling: which sites train each round (selection policies)."""
