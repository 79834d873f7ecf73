"""The flash-sale benchmark: Spillway side by side with the queues a Python team
would otherwise pick (see bench/flash_sale.py and docs/benchmarks.md)."""
