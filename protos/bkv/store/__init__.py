"""Generated code of the vault node's private storage formats (never on the public wire)."""
