"""Relay commands: the outbox's lifecycle, one executor per transport, confirmation by read-back."""
