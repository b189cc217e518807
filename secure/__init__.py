"""Privacy: protection of site updates (plaintext only so far; CKKS, SecAgg+, DP next)."""
