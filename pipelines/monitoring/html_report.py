"""The drift report a person reads: one self-contained HTML page per checked traffic window, logged
to the champion's monitor run in MLflow (artifacts `drift/report-<window end>.html`) and fetched by
`lakeloop monitor report`.

It shows the verdict of each detector, each feature's p-value next to its effect sizes, the reference
and window distributions of every feature and of the model's score, and the labelled windows'
performance checked in the same pass, and the online gate's live comparison of that pass (the
candidate against the champion on the same labelled rows). The distributions are drawn from what the detectors compare:
numeric features with missing values filled by the reference median, categories by the reference
vocabulary (plus "unseen" and "missing"). One PNG per page, embedded, so the page opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime

import numpy as np
import pandas as pd

from pipelines.core.loop_outcomes import OnlineStep
from pipelines.monitoring.champion import Champion
from pipelines.training.detectors import DetectorResult, model_score

COLUMNS_PER_ROW = 3
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f3f3f3; }
.drift { color: #b00020; font-weight: 600; }
.ok { color: #1b5e20; }
.muted { color: #777; }
img { max-width: 100%; }
"""


def render(
    champion: Champion,
    rows: pd.DataFrame,
    results: list[DetectorResult],
    window: str,
    performance: list[dict],
    online: OnlineStep | None = None,
) -> str:
    """The page for one traffic window: `rows` its served rows, `results` the detectors' findings on
    them, `window` its span in words, `performance` the labelled-window report rows of the pass,
    `online` what the pass's online gate step found (None: no candidate was set)."""
    features = next((r for r in results if r.detector == "features"), None)
    title = f"Drift report: {champion.name} v{champion.version}, {window}"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{STYLE}</style></head>",
        f"<body><h1>{_e(title)}</h1>",
        f"<p>{len(rows)} served rows checked against the training reference of run {_e(champion.run_id)}.</p>",
        "<h2>Verdicts</h2>",
        _verdicts(results),
    ]
    if features is not None:
        parts += ["<h2>Features</h2>", _feature_table(features)]
    parts += [
        "<h2>Distributions: reference and window</h2>",
        f"<img alt='distributions' src='data:image/png;base64,{_distributions(champion, rows)}'>",
        "<h2>Performance on labelled rows</h2>",
        _performance(performance),
        "<h2>Live comparison (online gate)</h2>",
        live_comparison(online),
        "</body></html>",
    ]
    return "\n".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value))


def _verdict(is_drift: bool | None) -> str:
    if is_drift is None:
        return "<span class='muted'>no decision</span>"
    return "<span class='drift'>drift</span>" if is_drift else "<span class='ok'>ok</span>"


def _number(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _verdicts(results: list[DetectorResult]) -> str:
    lines = ["<table><tr><th>detector</th><th>verdict</th><th>p-value</th><th>threshold</th><th>distance</th></tr>"]
    for r in results:
        lines.append(
            f"<tr><td>{_e(r.detector)}</td><td>{_verdict(r.is_drift)}</td><td>{_number(r.p_value)}</td>"
            f"<td>{_number(r.threshold)}</td><td>{_number(r.distance)}</td></tr>"
        )
    return "\n".join([*lines, "</table>"])


def _feature_table(features: DetectorResult) -> str:
    p_values, effects = features.details["p_values"], features.details.get("effect_sizes", {})
    lines = ["<table><tr><th>feature</th><th>p-value</th><th>shifted</th><th>effect sizes</th></tr>"]
    for name, p in sorted(p_values.items(), key=lambda item: item[1]):
        sizes = ", ".join(f"{measure} {value:.3g}" for measure, value in effects.get(name, {}).items())
        lines.append(
            f"<tr><td>{_e(name)}</td><td>{_number(p)}</td><td>{_verdict(p < features.threshold)}</td>"
            f"<td>{_e(sizes)}</td></tr>"
        )
    return "\n".join([*lines, "</table>"])


def _performance(performance: list[dict]) -> str:
    if not performance:
        return "<p class='muted'>No labelled window was checked in this pass.</p>"
    lines = ["<table><tr><th>labelled window</th><th>rows</th><th>metric</th><th>live</th><th>at test</th>"]
    lines.append("<th>drop</th><th>verdict</th></tr>")
    for report in performance:
        details = json.loads(report["details"])
        lines.append(
            f"<tr><td>{_e(_span(report['window_start'], report['window_end']))}</td><td>{report['rows']}</td>"
            f"<td>{_e(details.get('metric', ''))}</td><td>{_number(details.get('value'))}</td>"
            f"<td>{_number(details.get('reference'))}</td><td>{_number(report['distance'])}</td>"
            f"<td>{_verdict(report['is_drift'])}</td></tr>"
        )
    return "\n".join([*lines, "</table>"])


def live_comparison(online: OnlineStep | None) -> str:
    """The candidate (or the guard) against the champion on the same labelled rows: the metric of
    each, the pairs, the one-sided p-values and the decision of this pass."""
    if online is None:
        return (
            "<p class='muted'>No live comparison in this pass: no online candidate was set (gate.online), "
            "or the monitor ran with --no-submit.</p>"
        )
    other = "guard (the replaced champion)" if online.mode == "guard" else f"candidate ({online.mode})"
    rows = [
        ("champion", online.champion_version, online.champion),
        (other, online.candidate_version, online.candidate),
    ]
    lines = [f"<table><tr><th>model</th><th>version</th><th>{_e(online.metric)} on the paired rows</th></tr>"]
    lines += [f"<tr><td>{_e(m)}</td><td>{_e(v)}</td><td>{_number(value)}</td></tr>" for m, v, value in rows]
    lines.append("</table>")
    facts = [
        ("labelled pairs", online.pairs),
        ("p (better)", _number(online.p_better)),
        ("p (worse)", _number(online.p_worse)),
        ("p (not worse by the margin; champion below its floor)", _number(online.p_not_worse)),
        ("looks spent", online.looks),
        ("rows it failed to score", online.error_rows),
        ("decision", f"{online.action}{'' if online.applied or online.action == 'wait' else ' (not applied)'}"),
    ]
    lines.append("<table>")
    lines += [f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in facts if value != ""]
    lines += ["</table>", f"<p>{_e(online.reason)}</p>"]
    return "\n".join(lines)


def _span(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S}"


def _distributions(champion: Champion, rows: pd.DataFrame) -> str:
    """Reference against window for each feature and the score, as one base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite = champion.suite
    encoder = suite.encoder
    reference, window = suite.reference, encoder.encode(rows)
    panels = [*encoder.columns, "model score"]
    height = math.ceil(len(panels) / COLUMNS_PER_ROW)
    figure, axes = plt.subplots(height, COLUMNS_PER_ROW, figsize=(4.2 * COLUMNS_PER_ROW, 3.0 * height), squeeze=False)
    for axis, name in zip(axes.flat, panels, strict=False):
        if name == "model score":
            _histogram(axis, suite.reference_scores, model_score(suite.model, rows))
        elif name in encoder.categorical:
            index = encoder.columns.index(name)
            _bars(axis, reference[:, index], window[:, index], [*encoder.vocab[name], "unseen", "missing"])
        else:
            index = encoder.columns.index(name)
            _histogram(axis, reference[:, index], window[:, index])
        axis.set_title(name)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    axes.flat[0].legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _histogram(axis, reference: np.ndarray, window: np.ndarray) -> None:
    both = np.concatenate([reference, window])
    edges = np.histogram_bin_edges(both[np.isfinite(both)], bins=30)
    axis.hist(reference, bins=edges, density=True, alpha=0.5, label="reference")
    axis.hist(window, bins=edges, density=True, alpha=0.5, label="window")


def _bars(axis, reference: np.ndarray, window: np.ndarray, names: list[str]) -> None:
    positions = np.arange(len(names))
    for offset, (codes, label) in zip((-0.2, 0.2), ((reference, "reference"), (window, "window")), strict=True):
        shares = np.bincount(codes.astype(np.int64), minlength=len(names))[: len(names)] / max(len(codes), 1)
        axis.bar(positions + offset, shares, width=0.4, alpha=0.7, label=label)
    axis.set_xticks(positions, names, rotation=30, fontsize=8)
