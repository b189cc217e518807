"""Data sources: seeded generators, site loaders and graph builders."""
