"""The conflict review: the pairs with the most positive PD, for annotators to look at again.

PD(z) > 0 means the other aspects' (scaled) margins mostly prefer the REJECTED response of the
pair labelled on aspect k: the pair's label conflicts with what the other aspects say. The score
step writes the top ``n`` pairs by PD (ties by pair_id) into its reports folder:

- ``conflicts.csv``: ``rank``, ``pair_id``, ``aspect``, ``pd``, ``pd_ratings``, ``n_other``,
  ``n_disagree``, ``disagreeing`` (``aspect:margin`` of every other aspect whose margin has the
  sign against the label, most negative first, ``;``-separated), ``margin_<a>`` per aspect (the
  scaled margin d_a in [-1, 1]; empty on the pair's own aspect), ``prompt``, ``chosen``,
  ``rejected`` (full texts);
- ``conflicts.html``: the same as one self-contained page (no script, no external file), every
  text escaped, long texts cut to a snippet with the full text behind a ``<details>`` toggle.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

CSV_FILE = "conflicts.csv"
HTML_FILE = "conflicts.html"


def disagreeing(margins: dict[str, float]) -> list[tuple[str, float]]:
    """The aspects whose scaled margin is against the label (negative), most negative first."""
    out = [(a, float(v)) for a, v in margins.items() if v is not None and np.isfinite(v) and v < 0]
    return sorted(out, key=lambda t: (t[1], t[0]))


def conflict_review(df: pd.DataFrame, scores: pd.DataFrame, aspects: list[str], n: int,
                    texts=None) -> pd.DataFrame:
    """The ``n`` pairs with the most positive PD (pairs without PD left out; ties by pair_id).
    ``df`` (the pairs: prompt, chosen, rejected) and ``scores`` (the scores table) are aligned;
    ``texts(positions) -> DataFrame`` (prompt, chosen, rejected of those rows, in that order) reads
    the texts of just the reviewed pairs where ``df`` does not hold them (a large pool)."""
    pd_values = scores["pd"].to_numpy(dtype=float)
    has = np.flatnonzero(np.isfinite(pd_values))
    # most positive PD first, ties by pair_id
    order = has[np.lexsort((scores["pair_id"].to_numpy()[has].astype(str), -pd_values[has]))][:n]
    t = (texts(order) if texts is not None else df.iloc[order])[["prompt", "chosen", "rejected"]]
    rows = []
    for rank, i in enumerate(order, start=1):
        margins = {a: scores[f"margin_{a}"].iat[i] for a in aspects if f"margin_{a}" in scores}
        against = disagreeing(margins)
        pr = scores["pd_ratings"].iat[i] if "pd_ratings" in scores else np.nan
        rows.append({
            "rank": rank, "pair_id": scores["pair_id"].iat[i], "aspect": scores["aspect"].iat[i],
            "pd": float(pd_values[i]), "pd_ratings": float(pr) if pr is not None else np.nan,
            "n_other": int(scores["n_other"].iat[i]) if "n_other" in scores else len(margins),
            "n_disagree": len(against),
            "disagreeing": ";".join(f"{a}:{v:.3f}" for a, v in against),
            **{f"margin_{a}": float(v) if v is not None else np.nan for a, v in margins.items()},
            "prompt": t["prompt"].iat[rank - 1], "chosen": t["chosen"].iat[rank - 1],
            "rejected": t["rejected"].iat[rank - 1],
        })
    columns = (["rank", "pair_id", "aspect", "pd", "pd_ratings", "n_other", "n_disagree", "disagreeing"]
               + [f"margin_{a}" for a in aspects if f"margin_{a}" in scores] + ["prompt", "chosen", "rejected"])
    return pd.DataFrame(rows, columns=columns)


def _text(value, limit: int) -> str:
    """Escaped text; longer than ``limit`` characters: a snippet, the full text on expand."""
    s = "" if value is None else str(value)
    if len(s) <= limit:
        return f'<div class="t">{html.escape(s)}</div>'
    return (f'<details><summary class="t">{html.escape(s[:limit])}&hellip; '
            f'<span class="more">({len(s)} characters, show all)</span></summary>'
            f'<div class="t">{html.escape(s)}</div></details>')


def _num(v) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v + 0.0:+.3f}"  # + 0.0: no "-0.000"


def render_html(review: pd.DataFrame, aspects: list[str], title: str, snippet: int = 240) -> str:
    """One self-contained HTML page of the review (see the module doc)."""
    margin_cols = [a for a in aspects if f"margin_{a}" in review]
    head = "".join(f"<th>{html.escape(a)}</th>" for a in margin_cols)
    body = []
    for _, r in review.iterrows():
        cells = []
        for a in margin_cols:
            v = r[f"margin_{a}"]
            own = a == r["aspect"]
            cls = "own" if own else ("neg" if np.isfinite(v) and v < 0 else "pos")
            cells.append(f'<td class="{cls}">{"label" if own else _num(v)}</td>')
        against = r["disagreeing"] or "none"
        body.append(
            f"<tr><td>{int(r['rank'])}</td><td><code>{html.escape(str(r['pair_id']))}</code><br>"
            f"labelled on <b>{html.escape(str(r['aspect']))}</b></td>"
            f"<td>{_num(r['pd'])}</td><td>{_num(r['pd_ratings'])}</td>{''.join(cells)}"
            f"<td>{html.escape(against.replace(';', ', '))}</td>"
            f"<td>{_text(r['prompt'], snippet)}</td><td>{_text(r['chosen'], snippet)}</td>"
            f"<td>{_text(r['rejected'], snippet)}</td></tr>")
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}th{background:#eee}"
             ".neg{background:#f8d0d0}.pos{background:#d8f0d8}.own{color:#888}"
             ".t{white-space:pre-wrap;max-width:28em}.more{color:#06c}summary{cursor:pointer}")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(review)} pairs with the most positive PD: the other aspects' scaled margins "
        "(d in [-1, 1], r(chosen) - r(rejected) over the aspect's quantile) mostly prefer the rejected "
        "response. Red: the aspect disagrees with the label; green: it agrees. Candidates for "
        "re-annotation.</p>"
        "<table><thead><tr><th>#</th><th>pair</th><th>PD</th><th>PD from ratings</th>"
        f"{head}<th>disagreeing aspects</th><th>prompt</th><th>chosen</th><th>rejected</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></body></html>\n")


def write_conflict_review(df: pd.DataFrame, scores: pd.DataFrame, aspects: list[str], out_dir: str | Path,
                          n: int, title: str = "Conflict review", texts=None) -> dict:
    """Write ``conflicts.csv`` and ``conflicts.html`` into ``out_dir``; return a short summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    review = conflict_review(df, scores, aspects, n, texts)
    review.to_csv(out / CSV_FILE, index=False)
    (out / HTML_FILE).write_text(render_html(review, aspects, title), encoding="utf-8")
    return {"n_pairs": int(len(review)),
            "n_positive_pd": int((review["pd"] > 0).sum()) if len(review) else 0,
            "files": [CSV_FILE, HTML_FILE]}
