"""Datasets: provisioning of the raw files, task loading and the Lightning data module."""
