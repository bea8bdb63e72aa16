"""The status page: `State.page()` rendered as one self-contained HTML document.

Inline CSS and SVG only: the daemon often runs where nothing outside is reachable, so the
page loads no script, font, stylesheet or image from anywhere. Every value that came from
the config, the database or an upstream is redacted, then HTML-escaped, on its way in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any

from monitor.durations import format_duration
from monitor.redact import redact
from monitor.state import not_running

# How often the page reloads itself: fresh enough for an incident, light on the daemon.
REFRESH_SECONDS = 30
# The timeline shows this many entries at most; `history` has the rest.
TIMELINE_LIMIT = 100

STATES = {
    "healthy": ("Healthy", "ok"),
    "failed_over": ("Failed over", "warn"),
    "degraded": ("Degraded", "bad"),
    "all_down": ("All down", "bad"),
    "pinned": ("Pinned", "info"),
    "held": ("Held", "info"),
    "flapping": ("Flapping", "bad"),
}
HEALTH = {"up": "ok", "down": "bad", "unknown": "none"}
# Timeline entries coloured by what they mean for the characters on the group.
BAD_KINDS = {"failover", "failover_failed", "all_down", "isolated", "flapping", "alert_failed"}
GOOD_KINDS = {"failback", "recovered", "primary_recovered", "alert_delivered"}
WARN_KINDS = {"drift", "endpoint_down", "pinned", "held", "dry_run", "preflight_failed"}

CSS = """
:root{--bg:#f6f7f9;--card:#fff;--fg:#1b1f24;--muted:#5d6773;--line:#dde1e6;
--ok:#1f9d55;--ok2:#7cc68f;--warn:#d08700;--bad:#d93a3a;--info:#3b6fd4;--none:#c9ced6;
--p50:#3b6fd4;--p95:#b061d6}
@media (prefers-color-scheme:dark){:root{--bg:#0f1216;--card:#181c22;--fg:#e6e9ee;
--muted:#9aa3ad;--line:#2a3039;--ok:#34c46d;--ok2:#2c7a47;--warn:#e0a030;--bad:#f05252;
--info:#6b9bff;--none:#39414c;--p50:#6b9bff;--p95:#c98ff0}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header,main{max-width:980px;margin:0 auto;padding:0 14px}
header{padding-top:18px}
h1{font-size:20px;margin:0}h2{font-size:18px;margin:0}h3{font-size:16px;margin:0}
.summary{font-size:17px;font-weight:600;margin:6px 0 2px}
.muted{color:var(--muted);font-size:13px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:14px;margin:14px 0}
section.group{border-left:6px solid var(--tone)}
.head{display:flex;flex-wrap:wrap;align-items:center;gap:8px}
.badge{display:inline-block;border-radius:999px;padding:1px 10px;font-size:13px;
font-weight:600;color:#fff;background:var(--tone)}
.t-ok{--tone:var(--ok)}.t-warn{--tone:var(--warn)}.t-bad{--tone:var(--bad)}
.t-info{--tone:var(--info)}.t-none{--tone:var(--none)}
.facts{margin:6px 0 0;color:var(--muted)}.facts b{color:var(--fg)}
.endpoint{border-top:1px solid var(--line);margin-top:12px;padding-top:12px}
.dot{width:11px;height:11px;border-radius:50%;background:var(--tone);flex:none}
.tag{font-size:12px;border:1px solid var(--line);border-radius:4px;padding:0 6px;
color:var(--muted)}
.tag.active{border-color:var(--info);color:var(--info);font-weight:600}
.uptime{display:flex;gap:16px;margin:6px 0;flex-wrap:wrap}
.uptime span{font-variant-numeric:tabular-nums}.uptime b{font-size:16px}
svg{display:block;width:100%}
svg.days{height:34px}
svg.days rect:hover{opacity:.7}
.axis{display:flex;justify-content:space-between;color:var(--muted);font-size:12px}
.legend{display:flex;gap:14px;font-size:12px;color:var(--muted);margin-top:8px}
.legend i{display:inline-block;width:14px;height:3px;vertical-align:middle;margin-right:4px}
svg.latency{height:110px;border-bottom:1px solid var(--line)}
svg.latency .p50{stroke:var(--p50);fill:none;stroke-width:2}
svg.latency .p95{stroke:var(--p95);fill:none;stroke-width:1.5}
svg.latency circle.p50{fill:var(--p50)}svg.latency circle.p95{fill:var(--p95)}
svg.latency line{stroke:var(--line);stroke-dasharray:3 3}
.charts{display:grid;grid-template-columns:1fr;gap:10px;margin-top:8px}
@media (min-width:760px){.charts{grid-template-columns:1fr 1fr;gap:22px}}
.empty{color:var(--muted);font-size:13px;padding:8px 0}
.caption{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em;
margin-bottom:4px}
ol.timeline{list-style:none;margin:8px 0 0;padding:0}
ol.timeline li{border-top:1px solid var(--line);padding:8px 0;display:grid;
grid-template-columns:auto 1fr;gap:2px 10px}
ol.timeline time{color:var(--muted);font-size:13px;font-variant-numeric:tabular-nums}
ol.timeline .what{grid-column:1/-1}
.kind{font-size:12px;font-weight:700;color:var(--tone);text-transform:uppercase}
code{font-size:13px;word-break:break-all}
.daemon-down{background:var(--bad);color:#fff;border-radius:8px;padding:8px 12px;
font-weight:600;margin:8px 0}
"""


def _t(value: object) -> str:
    """Text for the page: redacted, then escaped for element content and attributes."""
    return escape(redact(str(value)), quote=True)


def _when(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).timestamp()


def _ago(value: str | None, now: float) -> str:
    at = _when(value)
    if at is None:
        return "never"
    return f"{format_duration(max(0.0, now - at))} ago"


def _clock(value: str | None) -> str:
    return "-" if value is None else value[:19].replace("T", " ") + " UTC"


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}%" if value < 100 else "100%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _day_tone(uptime: float | None) -> str:
    # Thresholds as on most status pages: a few minutes of a day is still green.
    if uptime is None:
        return "none"
    if uptime >= 99.9:
        return "ok"
    if uptime >= 99.0:
        return "ok2"
    if uptime >= 95.0:
        return "warn"
    return "bad"


def days_bar(days: Sequence[dict[str, Any]]) -> str:
    """One cell per day, oldest left; hovering a cell shows the day's figure."""
    cell, gap = 8, 2
    width = len(days) * (cell + gap) - gap
    rects = []
    for i, day in enumerate(days):
        uptime = day["uptime"]
        label = (
            f"{day['day']}: no probes"
            if uptime is None
            else f"{day['day']}: {_pct(uptime)} up ({day['probes']:,} probes)"
        )
        rects.append(
            f'<rect x="{i * (cell + gap)}" y="0" width="{cell}" height="30" rx="1.5" '
            f'fill="var(--{_day_tone(uptime)})" data-day="{_t(day["day"])}" '
            f'data-uptime="{"" if uptime is None else uptime}"><title>{_t(label)}</title></rect>'
        )
    return (
        f'<svg class="days" viewBox="0 0 {width} 30" preserveAspectRatio="none" role="img" '
        f'aria-label="uptime per day, last {len(days)} days">{"".join(rects)}</svg>'
        f'<div class="axis"><span>{len(days)} days ago</span><span>today (UTC)</span></div>'
    )


def _nice(value: float) -> float:
    """A round number at or above `value`, for the top of the latency axis."""
    for step in (10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000):
        if value <= step:
            return float(step)
    return float(int(value / 10000 + 1) * 10000)


def latency_chart(points: Sequence[dict[str, Any]], now: float) -> str:
    """p50 and p95 over time; a gap where nothing passed; a dot for a lone point."""
    drawn = [p for p in points if p["p50"] is not None]
    if not drawn:
        return '<div class="empty">No successful probe in the last 24 hours.</div>'
    width, height = 600.0, 110.0
    start = _when(points[0]["at"]) or now
    span = max(1.0, now - start)
    top = _nice(max(p["p95"] or p["p50"] for p in drawn) * 1.1)

    def xy(point: dict[str, Any], key: str) -> tuple[float, float]:
        at = (_when(point["at"]) or start) + point["seconds"] / 2
        x = min(width, max(0.0, (at - start) / span * width))
        return x, height - point[key] / top * (height - 4)

    shapes = [
        f'<line x1="0" x2="{width:g}" y1="{height / 2:g}" y2="{height / 2:g}"/>',
    ]
    for key in ("p95", "p50"):
        segment: list[tuple[float, float]] = []
        runs = []
        for point in points:
            if point[key] is None:
                if segment:
                    runs.append(segment)
                segment = []
            else:
                segment.append(xy(point, key))
        if segment:
            runs.append(segment)
        for run in runs:
            if len(run) == 1:
                x, y = run[0]
                shapes.append(f'<circle class="{key}" cx="{x:.1f}" cy="{y:.1f}" r="3"/>')
            else:
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                shapes.append(
                    f'<polyline class="{key}" points="{coords}" '
                    'vector-effect="non-scaling-stroke"/>'
                )
    for point in drawn:
        x, y = xy(point, "p50")
        label = (
            f"{_clock(point['at'])}: p50 {_ms(point['p50'])}, p95 {_ms(point['p95'])} "
            f"({point['probes']} probes)"
        )
        shapes.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="transparent">'
            f"<title>{_t(label)}</title></circle>"
        )
    return (
        f'<svg class="latency" viewBox="0 0 {width:g} {height:g}" preserveAspectRatio="none" '
        f'role="img" aria-label="latency p50 and p95">{"".join(shapes)}</svg>'
        f'<div class="axis"><span>{_t(_clock(points[0]["at"]))}</span>'
        f"<span>0 to {top:g} ms</span><span>now</span></div>"
        '<div class="legend"><span><i style="background:var(--p50)"></i>p50</span>'
        '<span><i style="background:var(--p95)"></i>p95</span></div>'
    )


def _endpoint(group: dict[str, Any], endpoint: dict[str, Any], now: float) -> str:
    health = endpoint["health"]
    tags = []
    if endpoint["name"] == group["active_endpoint"]:
        tags.append('<span class="tag active">active</span>')
    if endpoint["name"] == group["endpoints"][0]["name"]:
        tags.append('<span class="tag">primary</span>')
    last = endpoint["last_probe"]
    if last is None:
        probe = "not probed yet"
    else:
        result = "ok" if last["ok"] else last["outcome"]
        extra = f", HTTP {last['http_status']}" if last["http_status"] and not last["ok"] else ""
        took = f" in {_ms(last['latency_ms'])}" if last["latency_ms"] is not None else ""
        probe = f"{result}{took}{extra}, {_ago(last['at'], now)}"
        if last["detail"] and not last["ok"]:
            probe += f": {last['detail']}"
    since = f" for {_ago(endpoint['health_since'], now)[:-4]}" if endpoint["health_since"] else ""
    uptime = "".join(
        f"<span>{window} <b>{_pct(endpoint['uptime'].get(window))}</b></span>"
        for window in ("24h", "7d", "30d")
    )
    return (
        f'<div class="endpoint t-{HEALTH.get(health, "none")}" '
        f'data-endpoint="{_t(endpoint["name"])}" data-health="{_t(health)}">'
        f'<div class="head"><span class="dot"></span><h3>{_t(endpoint["name"])}</h3>'
        f"{''.join(tags)}<span>{_t(health)}{_t(since)}</span></div>"
        f'<div class="facts"><code>{_t(endpoint["base_url"])}</code></div>'
        f'<div class="facts">last probe: {_t(probe)}</div>'
        f'<div class="uptime">{uptime}</div>'
        f'<div class="charts"><div><div class="caption">uptime per day</div>'
        f"{days_bar(endpoint['days'])}</div>"
        f'<div><div class="caption">latency, last 24 hours</div>'
        f"{latency_chart(endpoint['latency'], now)}</div></div>"
        "</div>"
    )


def _group(group: dict[str, Any], now: float) -> str:
    state = group["state"]
    label, tone = STATES.get(state or "", (state or "Not seen yet", "none"))
    if state is None:
        label = "Not seen by the daemon yet"
    facts = [f"active endpoint <b>{_t(group['active_endpoint'] or 'none of ours')}</b>"]
    if group["pinned"]:
        pin = group["pinned"]
        facts.append(f"pinned to <b>{_t(pin['endpoint'])}</b> until {_t(_clock(pin['until']))}")
    if group["condition"]:
        facts.append(f"condition <b>{_t(group['condition'])}</b>")
    switch = group["last_switch"]
    if switch is None:
        last = "never switched"
    else:
        # A rehome or key rotation updates Convai without moving the group.
        moved = (
            f"<b>{_t(switch['from'])} → {_t(switch['to'])}</b>"
            if switch["from"] != switch["to"]
            else f"on <b>{_t(switch['to'])}</b>"
        )
        last = (
            f"last switch {_t(switch['kind'])} {moved}"
            f" {_t(_ago(switch['at'], now))}: {_t(switch['reason'])}"
        )
    endpoints = "".join(_endpoint(group, e, now) for e in group["endpoints"])
    return (
        f'<section class="group t-{tone}" data-group="{_t(group["model_group_name"])}" '
        f'data-state="{_t(state or "")}">'
        f'<div class="head"><h2>{_t(group["model_group_name"])}</h2>'
        f'<span class="badge state">{_t(label)}</span></div>'
        f'<p class="facts">{" · ".join(facts)}</p><p class="facts last-switch">{last}</p>'
        f"{endpoints}</section>"
    )


def _timeline(entries: Sequence[dict[str, Any]], since: str, now: float) -> str:
    if not entries:
        body = f'<div class="empty">Nothing happened since {_t(_clock(since))}.</div>'
    else:
        items = []
        for entry in entries[:TIMELINE_LIMIT]:
            kind = entry["kind"]
            tone = (
                "bad"
                if kind in BAD_KINDS
                else "ok"
                if kind in GOOD_KINDS
                else "warn"
                if kind in WARN_KINDS
                else "info"
            )
            tid = entry.get("transaction_id")
            extra = f" (Convai transactionID {tid})" if tid else ""
            items.append(
                f'<li class="t-{tone}" data-kind="{_t(kind)}">'
                f'<time datetime="{_t(entry["at"])}" title="{_t(_ago(entry["at"], now))}">'
                f"{_t(_clock(entry['at']))}</time>"
                f'<span><span class="kind">{_t(kind.replace("_", " "))}</span> '
                f"{_t(entry['model_group_name'])}</span>"
                f'<span class="what">{_t(entry["message"])}{_t(extra)}</span></li>'
            )
        more = len(entries) - TIMELINE_LIMIT
        if more > 0:
            items.append(f'<li class="empty">and {more} older: see `convai-monitor history`</li>')
        body = f'<ol class="timeline">{"".join(items)}</ol>'
    return (
        f'<section class="timeline-section"><h2>Timeline</h2>'
        f'<p class="muted">Newest first, since {_t(_clock(since))}</p>{body}</section>'
    )


def _summary(groups: Sequence[dict[str, Any]]) -> tuple[str, str]:
    troubled = [g for g in groups if g["state"] not in ("healthy", None)]
    if not troubled:
        return "All groups healthy", "ok"
    worst = "bad" if any(STATES.get(g["state"], ("", "bad"))[1] == "bad" for g in troubled) else ""
    names = ", ".join(
        f"{g['model_group_name']} {STATES.get(g['state'], (g['state'], ''))[0].lower()}"
        for g in troubled
    )
    return f"{len(troubled)} of {len(groups)} groups need attention: {names}", worst or "warn"


def _daemon(daemon: dict[str, Any], now: float) -> str:
    """A banner above everything when no daemon is running: every figure on the page is
    then what it last recorded, and nothing is probed or failed over until it is back."""
    if daemon["running"]:
        return ""
    at = _when(daemon["last_seen"])
    ago = None if at is None else max(0, round(now - at))
    return (
        f'<p class="daemon-down" role="alert">{_t(not_running(ago, daemon["stopped"]))}: '
        "nothing is probed or failed over until it runs again; what follows is what it "
        "last recorded.</p>"
    )


def render(model: dict[str, Any], now: float) -> str:
    """The whole page from `State.page()`."""
    headline, tone = _summary(model["groups"])
    if not model["daemon"]["running"]:
        headline, tone = f"Daemon not running · {headline}", "bad"
    alerts = model["alerts"]
    alert_line = (
        f"alerts: {alerts['delivered']} delivered · {alerts['pending']} pending · "
        f"{alerts['failed']} failed"
    )
    failure = alerts.get("last_failure")
    if failure:
        alert_line += (
            f" (last failure: {failure['kind']} for {failure['group']}: {failure['error']})"
        )
    unmonitored = "".join(
        f'<p class="facts">unmonitored on Convai: <b>{_t(g["model_group_name"])}</b> '
        f"(<code>{_t(g['base_url'])}</code>)</p>"
        for g in model.get("unmonitored", [])
    )
    return (
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{_t(headline)} · convai-monitor</title><style>{CSS}</style></head><body>"
        f"<header><h1>convai-monitor</h1>{_daemon(model['daemon'], now)}"
        f'<p class="summary t-{tone}" style="color:var(--tone)">{_t(headline)}</p>'
        f'<p class="muted">updated {_t(_clock(model["generated_at"]))} · refreshes every '
        f"{REFRESH_SECONDS} s · {_t(alert_line)}</p>{unmonitored}</header><main>"
        f"{''.join(_group(g, now) for g in model['groups'])}"
        f"{_timeline(model['timeline'], model['timeline_since'], now)}"
        "</main></body></html>"
    )
