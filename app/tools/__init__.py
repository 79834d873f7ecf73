"""Operator and test tooling: burst generation, stage worker processes, result tallies."""
