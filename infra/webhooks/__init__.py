"""Signed webhooks: subscriptions, the relay from the log, delivery, and the outbound guard."""
