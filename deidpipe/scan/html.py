"""The HTML report: one self-contained file (inline CSS and SVG, thumbnails as ``data:`` URIs, no script, nothing
fetched at view time) with the counts, the findings table, the risk figures and two charts: the class-size
histogram and the distribution of the patients' prosecutor risk.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from deidpipe.scan.findings import ScanReport
from deidpipe.scan.report import by_rule
from deidpipe.scan.rules import RULES, SEVERITIES

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde3ea}
.meta{color:#5b6778;font-size:13px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #dde3ea;border-radius:8px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:24px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border:1px solid #dde3ea;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
td:nth-child(2),td:nth-child(3){white-space:nowrap}
th{background:#f3f6f9}
.sev{font-weight:600;border-radius:4px;padding:1px 6px;color:#fff}
.high{background:#c62828}.medium{background:#ef8f00}.low{background:#1e88e5}.info{background:#78909c}
.thumbs{display:flex;gap:16px;flex-wrap:wrap}
figure{margin:0;border:1px solid #dde3ea;border-radius:8px;padding:8px;max-width:280px}
figure img{max-width:260px;max-height:260px;display:block;image-rendering:pixelated}
figcaption{font-size:12px;color:#5b6778;margin-top:4px;word-break:break-all}
.charts{display:flex;gap:24px;flex-wrap:wrap}
svg text{font-size:11px;fill:#1d2430}
"""
MAX_ROWS = 2000
MAX_THUMBS = 60


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def bar_chart(title: str, bars: list[tuple[str, float]], xlabel: str, ylabel: str, width: int = 460,
              height: int = 240) -> str:
    """An inline SVG bar chart of (label, value) pairs."""
    left, bottom, top, right = 48, 40, 28, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((v for _, v in bars), default=0) or 1
    n = max(len(bars), 1)
    step = plot_w / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_e(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="600">{_e(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
             f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{_e(_num(peak))}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>']
    for i, (label, value) in enumerate(bars):
        h = plot_h * value / peak
        x = left + i * step + step * 0.1
        parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{step * 0.8:.1f}" height="{h:.1f}" '
                     f'fill="#3b6fb6"><title>{_e(label)}: {_e(_num(value))}</title></rect>')
        if n <= 16 or i % max(1, n // 12) == 0:
            parts.append(f'<text x="{x + step * 0.4:.1f}" y="{top + plot_h + 14}" '
                         f'text-anchor="middle">{_e(label)}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{_e(xlabel)}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + plot_h / 2})">{_e(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


def class_size_bars(class_sizes: dict[int, int]) -> list[tuple[str, float]]:
    """Classes by size: sizes 1-9 one by one, then 10-19, 20-49, 50+."""
    buckets = [(str(s), s, s) for s in range(1, 10)] + [("10-19", 10, 19), ("20-49", 20, 49), ("50+", 50, 1 << 62)]
    return [(label, float(sum(c for s, c in class_sizes.items() if lo <= s <= hi))) for label, lo, hi in buckets]


def risk_bars(class_sizes: dict[int, int]) -> list[tuple[str, float]]:
    """Records (patients) by their prosecutor risk 1/class size, in bands."""
    bands = [(0.0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.34), (0.34, 0.5), (0.5, 0.99), (0.99, 1.0)]
    out = []
    for lo, hi in bands:
        n = sum(size * count for size, count in class_sizes.items() if lo < 1.0 / size <= hi or (lo == 0 and
                                                                                                   1.0 / size <= hi))
        out.append((f"{lo:g}-{hi:g}" if hi < 1 else "1", float(n)))
    return out


def _risk_section(report: ScanReport) -> str:
    risk = report.risk
    if risk is None:
        return "<h2>Re-identification risk</h2><p>No object was read: no quasi-identifier table.</p>"
    pu = risk.population_uniqueness

    def f(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v))

    rows = [("patients (records)", risk.records), ("fully suppressed (in no class)", risk.suppressed),
            ("quasi-identifiers", ", ".join(report.quasi_identifiers)), ("equivalence classes", risk.classes),
            ("k (smallest class)", risk.k), ("prosecutor: records at risk", f(risk.prosecutor.records_at_risk)),
            ("prosecutor: highest risk", f(risk.prosecutor.highest_risk)),
            ("prosecutor: success rate", f(risk.prosecutor.success_rate)),
            ("journalist: success rate", f(risk.journalist.success_rate)),
            ("marketer: success rate", f(risk.marketer.success_rate)),
            ("sample uniqueness", f(risk.sample_uniqueness)),
            ("population size N", f(risk.population)),
            ("population uniqueness (Dankar)", f(pu.dankar))]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    charts = (bar_chart("Class-size histogram", class_size_bars(risk.class_sizes), "class size", "classes")
              + bar_chart("Risk distribution", risk_bars(risk.class_sizes), "prosecutor risk (1 / class size)",
                          "patients"))
    return (f'<h2>Re-identification risk</h2><table id="risk" style="width:auto">{body}</table>'
            f'<div class="charts" id="risk-charts">{charts}</div>')


def to_html(report: ScanReport, title: str = "deidpipe scan report") -> str:
    counts = report.counts
    cards = [("objects", report.objects), ("unreadable", report.errors)] + [(s, counts[s]) for s in
                                                                            reversed(SEVERITIES)]
    cards_html = "".join(f'<div class="card"><b>{_e(v)}</b>{_e(k)}</div>' for k, v in cards)
    rule_rows = "".join(
        f'<tr><td>{_e(rid)}</td><td>{_e(RULES[rid].name)}</td><td><span class="sev {sev}">{sev}</span></td>'
        f"<td>{n}</td><td>{objs}</td></tr>" for rid, sev, n, objs in by_rule(report))
    rows = "".join(
        f'<tr><td>{_e(f.path)}</td><td>{_e(f.rule)}</td><td><span class="sev {f.severity}">{f.severity}</span>'
        f"</td><td>{_e(f.location)}</td><td>{_e(f.message)}</td></tr>" for f in report.findings[:MAX_ROWS])
    more = (f"<p>{len(report.findings) - MAX_ROWS} more findings are in the JSON report.</p>"
            if len(report.findings) > MAX_ROWS else "")
    shown: dict[tuple[str, str], list[str]] = {}  # one thumbnail per object and image (it shows all its boxes)
    for f in report.findings:
        if f.thumbnail and (len(shown) < MAX_THUMBS or (f.path, f.thumbnail) in shown):
            shown.setdefault((f.path, f.thumbnail), []).append(f.rule)
    thumbs_html = "".join(
        f'<figure><img class="thumb" alt="{_e(" ".join(sorted(set(rules))))} {_e(path)}" src="{thumb}">'
        f"<figcaption>{_e(', '.join(sorted(set(rules))))} · {_e(path)} · {len(rules)} finding(s)</figcaption>"
        f"</figure>" for (path, thumb), rules in shown.items())
    thumbs = list(shown)
    thumbs_section = (f'<h2>Pixel text and faces</h2><div class="thumbs" id="thumbnails">{thumbs_html}</div>'
                      if thumbs else "")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    banner = ('<p id="show-values" style="background:#c62828;color:#fff;padding:8px;font-weight:600">This report '
              "was made with --show-values: its thumbnails show the text and faces found. For the steward's own "
              "review only; do not share it.</p>") if report.show_values else ""
    thumb_note = "" if report.show_values else "; text found in pixels is blacked and faces are pixelated"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
{banner}<div class="meta">Generated {when}. Findings name rules, locations and counts; no header value of the archive is
shown{thumb_note}.</div>
<div class="cards" id="counts">{cards_html}</div>
<h2>Findings by rule</h2>
<table id="rules"><thead><tr><th>rule</th><th>name</th><th>severity</th><th>findings</th><th>objects</th></tr>
</thead><tbody>{rule_rows}</tbody></table>
{thumbs_section}
<h2>Findings</h2>
<table id="findings"><thead><tr><th>path</th><th>rule</th><th>severity</th><th>location</th><th>message</th></tr>
</thead><tbody>{rows}</tbody></table>{more}
{_risk_section(report)}
</body></html>"""
