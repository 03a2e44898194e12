"""Charts for the status page, drawn server-side as SVG geometry (no JavaScript, no CDN).

Pure functions: hourly `stats.Figures` in, the shapes of one chart out (`Chart`), which
templates/delivery/status.html writes as inline SVG. The SVG has a viewBox and scales to its
container, so one drawing serves a laptop and a phone.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from delivery.stats import COUNTED, PERCENTILES, Figures

WIDTH, HEIGHT = 480, 240
LEFT, RIGHT, TOP, BOTTOM = 72, 20, 10, 28  # margins around the plot, for the axis labels
X_LABEL_EVERY = 6  # hours between labels on the time axis


@dataclass
class Tick:
    at: float  # x or y in the SVG
    label: str


@dataclass
class Point:
    x: float
    y: float
    title: str


@dataclass
class Series:
    name: str
    css: str
    paths: list[str] = field(default_factory=list)  # SVG path data, one per unbroken run
    points: list[Point] = field(default_factory=list)


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass
class Chart:
    """What one chart draws, in SVG user units (a WIDTH x HEIGHT viewBox)."""

    title: str
    empty: bool
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    legend: list[str] = field(default_factory=list)  # CSS classes, which are also the labels
    series: list[Series] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def _slot_x(index: int, slots: int) -> tuple[float, float]:
    """(centre x, width) of the index-th of `slots` equal slots across the plot."""
    width = (WIDTH - RIGHT - LEFT) / slots
    return LEFT + (index + 0.5) * width, width


def _x_ticks(hours: Sequence[datetime]) -> list[Tick]:
    last = len(hours) - 1
    return [
        Tick(_slot_x(i, len(hours))[0], f"{hour:%H:00}")
        for i, hour in enumerate(hours)
        if (last - i) % X_LABEL_EVERY == 0
    ]


def seconds_label(seconds: float) -> str:
    """A duration to three significant digits: 12.5 ms, 3.2 s, 16.7 min."""
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 1000:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min"


def latency_chart(hourly: Sequence[tuple[datetime, Figures]]) -> Chart:
    """p50/p95/p99 accept->sent latency per hour, on a logarithmic axis (decades)."""
    hours = [hour for hour, _ in hourly]
    values = {q: [figures.percentile(q) for _, figures in hourly] for q in PERCENTILES}
    present = [v for row in values.values() for v in row if v is not None and v > 0]
    chart = Chart("Latency per hour", not present, _x_ticks(hours), [])
    chart.legend = [f"p{q}" for q in PERCENTILES]
    if not present:
        return chart
    low = 10 ** math.floor(math.log10(min(present)))
    high = 10 ** math.ceil(math.log10(max(present)))
    if high <= low:
        high = low * 10
    span = math.log10(high) - math.log10(low)

    def y(value: float) -> float:
        share = (math.log10(max(value, low)) - math.log10(low)) / span
        return chart.bottom - share * (chart.bottom - chart.top)

    decade = low
    while decade <= high * 1.001:
        chart.y_ticks.append(Tick(y(decade), seconds_label(decade)))
        decade *= 10
    for q in PERCENTILES:
        series = Series(f"p{q}", f"p{q}")
        run: list[str] = []
        for index, value in enumerate(values[q]):
            if value is None:
                if len(run) > 1:
                    series.paths.append("M" + " L".join(run))
                run = []
                continue
            x = _slot_x(index, len(hours))[0]
            run.append(f"{x:.1f} {y(value):.1f}")
            title = f"{hours[index]:%H:00} p{q} {seconds_label(value)}"
            series.points.append(Point(round(x, 1), round(y(value), 1), title))
        if len(run) > 1:
            series.paths.append("M" + " L".join(run))
        chart.series.append(series)
    return chart


def _nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at least `raw`."""
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def volume_chart(hourly: Sequence[tuple[datetime, Figures]]) -> Chart:
    """Messages finished per hour, stacked by final status."""
    hours = [hour for hour, _ in hourly]
    totals = [sum(figures.counts.values()) for _, figures in hourly]
    chart = Chart("Messages per hour", not any(totals), _x_ticks(hours), [])
    chart.legend = [status.value for status in COUNTED]
    if chart.empty:
        return chart
    step = _nice_step(max(max(totals) / 4, 1))
    top = step * math.ceil(max(totals) / step)
    scale = (chart.bottom - chart.top) / top
    chart.y_ticks = [
        Tick(chart.bottom - i * step * scale, f"{int(i * step):,}")
        for i in range(round(top / step) + 1)
    ]
    for index, (hour, figures) in enumerate(hourly):
        x, slot = _slot_x(index, len(hours))
        base = chart.bottom
        for status in COUNTED:
            count = figures.counts[status.value]
            if not count:
                continue
            height = count * scale
            chart.bars.append(
                Bar(
                    round(x - slot * 0.35, 1),
                    round(base - height, 1),
                    round(slot * 0.7, 1),
                    round(height, 1),
                    status.value,
                    f"{hour:%H:00} {status.value} {count:,}",
                )
            )
            base -= height
    return chart
