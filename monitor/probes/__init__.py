"""Probes: gather raw facts about an endpoint into one result; never judge, never raise."""

from monitor.probes.chat import ChatProber, ProbeShape
from monitor.probes.classify import Reply, classify

__all__ = ["ChatProber", "ProbeShape", "Reply", "classify"]
