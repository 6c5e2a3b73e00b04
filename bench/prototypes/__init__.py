"""Prototypes of proposed product changes, measured by the benchmarks (never imported by the product)."""
