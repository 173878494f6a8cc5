"""Results as plain data, with their JSON forms."""
