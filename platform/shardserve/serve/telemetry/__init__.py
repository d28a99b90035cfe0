"""Traces, metrics and cold-start timing from inside the replica."""
