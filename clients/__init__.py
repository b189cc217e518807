"""The site: Flower ClientApp with train, evaluate and telemetry handlers."""
