"""Benchmarks: each writes JSON under results/; none is a timed test."""
