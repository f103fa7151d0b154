"""Switchyard benchmark harness (see bench/README.md)."""
