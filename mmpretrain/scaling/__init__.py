"""Compute accounting and scaling-law tools."""
