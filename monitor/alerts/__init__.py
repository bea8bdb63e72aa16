"""Alerts: targets (apprise URLs), rendering, and delivery from the outbox."""
