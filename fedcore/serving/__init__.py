"""Serving at the site: the transaction history, in-context scoring, the scoring service and its monitor."""
