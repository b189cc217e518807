"""Engines that deliver the coordinator's messages to the sites."""
