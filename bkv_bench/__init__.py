"""bkv-bench: load tests through the real client library, with ceilings measured in the same run."""
