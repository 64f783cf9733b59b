"""Exploring Vision Transformers for Fine-grained Classification (Conde & Turgutlu, 2021), reproduced."""

__version__ = "0.1.0"
