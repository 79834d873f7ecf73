"""The harness around the product: burst generation, stage worker processes, result tallies,
the demo and the local stack (harness.stack). Not part of the product: `pip install .` ships
it, but its extra dependencies are in the `harness` optional group (pyproject.toml)."""
