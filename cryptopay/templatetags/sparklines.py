"""``{% sparkline series name %}``: the last hour of a time series (resilience.timeseries) as a
small inline SVG step line, drawn here: no chart library, nothing loaded from elsewhere, and the
admin's CSP (no inline script) is untouched."""

from __future__ import annotations

from collections.abc import Mapping

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from resilience.timeseries import Series

register = template.Library()

WIDTH, HEIGHT, PAD = 120, 24, 2


def sparkline_svg(
    series: Series | None, *, since: float, until: float, top: float | None
) -> SafeString:
    """A step line of ``series`` between ``since`` and ``until`` (unix times), scaled to ``top``
    (or the series' own maximum). Its title says the range, for a hover."""
    points = series.points if series else []
    if not points:
        return mark_safe('<span class="note sparkline-empty">no samples yet</span>')
    values = [value for _, value in points]
    ceiling = top if top is not None else max(max(values), 1.0)
    span = max(until - since, 1.0)

    def x(at: float) -> float:
        return round(PAD + (WIDTH - 2 * PAD) * min(max((at - since) / span, 0.0), 1.0), 1)

    def y(value: float) -> float:
        return round(HEIGHT - PAD - (HEIGHT - 2 * PAD) * min(value / ceiling, 1.0), 1)

    coordinates: list[str] = []
    previous: float | None = None
    for at, value in points:
        if previous is not None:  # a step: hold the previous value until this sample
            coordinates.append(f"{x(at)},{y(previous)}")
        coordinates.append(f"{x(at)},{y(value)}")
        previous = value
    coordinates.append(f"{x(until)},{y(values[-1])}")
    title = f"last hour: min {min(values):g}, max {max(values):g}, now {values[-1]:g}"
    return format_html(
        '<svg class="sparkline" width="{}" height="{}" viewBox="0 0 {} {}" role="img" '
        'aria-label="{}"><title>{}</title><polyline fill="none" stroke="currentColor" '
        'stroke-width="1.5" points="{}"/></svg>',
        WIDTH, HEIGHT, WIDTH, HEIGHT, title, title, " ".join(coordinates),
    )  # fmt: skip


@register.simple_tag
def sparkline(history: Mapping | None, name: str, top: float | None = None) -> SafeString:
    """``history`` is the view's {"series": {name: Series}, "since": t, "until": t}."""
    if not history:
        return mark_safe('<span class="note">no history</span>')
    return sparkline_svg(
        history["series"].get(name), since=history["since"], until=history["until"], top=top
    )
