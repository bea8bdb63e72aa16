"""Probes: gather raw facts about an endpoint into one result; never judge, never raise."""

from monitor.probes.chat import ChatProber, classify

__all__ = ["ChatProber", "classify"]
