"""Readers for the public benchmark file formats, each returning `TaskData` (see example.py)."""
