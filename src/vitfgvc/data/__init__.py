"""Datasets: the registry of facts, the parsers, download and extraction, prepare, the loader and the views."""
