"""frontend_chatd."""
