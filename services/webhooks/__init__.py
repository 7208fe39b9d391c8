"""Webhook deliveries: the facts recorded about them and the retry policy (pure)."""
