"""bkv-chaos: fault injection under load, recorded histories and the offline invariant checker."""
