"""The site: Flower ClientApp (train, evaluate, export, telemetry) over a SiteRuntime, and its side of each privacy mode."""
