"""Invitations: signing a joint statement through an e-mailed link, without an account."""
