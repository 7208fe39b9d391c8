"""Reminders and notices: which message is due when, as data (see ``rules``)."""
