"""Reload's effect on probing: which endpoints were added, removed or changed, and the
probe jobs and health that go with each."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.config import Target
from monitor.domain.health import UNPROBED, HealthState
from monitor.runtime.monitor import Monitor
from monitor.store import EndpointKey


@dataclass(frozen=True, slots=True)
class TargetChanges:
    added: list[EndpointKey]
    removed: list[EndpointKey]
    changed: list[EndpointKey]

    def log_fields(self) -> dict[str, list[str]]:
        return {
            "added": [f"{g}/{e}" for g, e in self.added],
            "removed": [f"{g}/{e}" for g, e in self.removed],
            "changed": [f"{g}/{e}" for g, e in self.changed],
        }


def retarget(
    monitor: Monitor,
    targets: list[Target],
    ids: dict[EndpointKey, int],
    states: dict[EndpointKey, HealthState],
) -> TargetChanges:
    """Swap the monitor's probes over to `targets`; `states` is the stored health."""
    old = dict(monitor.targets)
    new = {(t.group, t.endpoint): t for t in targets}
    monitor.endpoint_ids.update(ids)
    removed = [k for k in old if k not in new]
    changed = [k for k in new if k in old and _differs(old[k], new[k])]
    added = [k for k in new if k not in old]
    for key in removed + changed:
        monitor.remove_target(key)
    for key in changed:
        if old[key].base_url != new[key].base_url:
            # Another URL is another endpoint: its health starts afresh.
            monitor.states[key] = states.get(key, UNPROBED)
    for key in added:
        monitor.states[key] = states.get(key, UNPROBED)
    monitor.add_targets([new[k] for k in changed + added])
    return TargetChanges(added, removed, changed)


def _differs(a: Target, b: Target) -> bool:
    return (a.base_url, a.api_key, a.model, a.policy, a.priority) != (
        b.base_url,
        b.api_key,
        b.model,
        b.policy,
        b.priority,
    )
