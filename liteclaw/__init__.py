"""The `liteclaw` operator command: runs the whole system locally and helps operate it."""
