"""vault_node."""
