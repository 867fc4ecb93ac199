"""Bailu: a self-hosted LLM writing assistant that learns from its users' feedback."""

__version__ = "0.1.0"
