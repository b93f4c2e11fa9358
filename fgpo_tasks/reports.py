"""Report files (PNG + the same numbers as JSON) that the stages write and an MLflow run carries.

- ``pd_histogram``: PD over the pool, the selection cut marked;
- ``conflict_matrix``: for aspects k (rows) and k' (columns), how often r_k' disagrees with D_k's
  labels (scaled margin d_k' < 0) among the pairs of D_k it scored;
- ``length_distributions``: response lengths before and after selection;
- ``reward_model_table``: held-out accuracy and length bias (with and without debiasing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fgpo_tasks import jsonio
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonio.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return str(v)


def _clean(x):
    """NaN/inf -> None so the JSON is valid everywhere."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def pd_histogram(pd_values, out_dir: str | Path, *, cut: float | None = None, selected=None,
                 name: str = "pd_histogram", title: str = "preference divergence") -> dict:
    """Histogram of PD (selected pairs shaded when given), the cut as a vertical line."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    v = np.asarray(pd_values, dtype=float)
    v = v[np.isfinite(v)]
    bins = np.linspace(v.min(), v.max(), 41) if len(v) and v.min() < v.max() else 10
    counts, edges = np.histogram(v, bins=bins) if len(v) else (np.zeros(0), np.zeros(0))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(v, bins=edges if len(edges) else 10, color="lightgrey", label=f"pool (n={len(v)})")
    data = {"n": int(len(v)), "counts": counts.tolist(), "edges": edges.tolist(), "cut": cut,
            "mean": float(v.mean()) if len(v) else None,
            "quantiles": {str(q): float(np.quantile(v, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)} if len(v) else {}}
    if selected is not None:
        s = np.asarray(pd_values, dtype=float)[np.asarray(selected, dtype=bool)]
        s = s[np.isfinite(s)]
        ax.hist(s, bins=edges if len(edges) else 10, color="tab:blue", alpha=0.7,
                label=f"selected (n={len(s)})")
        data["selected_counts"] = np.histogram(s, bins=edges)[0].tolist() if len(edges) else []
    if cut is not None and np.isfinite(cut):
        ax.axvline(cut, color="red", ls="--", label=f"cut {cut:.3f}")
    ax.set_xlabel("PD (negative: the other aspects agree with the label)")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    plt.close(fig)
    data = _clean(data)
    _write_json(out / f"{name}.json", data)
    return data


def conflict_matrix(pair_aspects, scaled: np.ndarray, model_aspects: list[str], out_dir: str | Path,
                    name: str = "conflict_matrix") -> dict:
    """C[k][k'] = share of D_k pairs with d_k' < 0 (r_k' prefers the rejected response)."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pair_aspects = np.asarray(pair_aspects)
    rows = sorted(set(pair_aspects.tolist()))
    mat = np.full((len(rows), len(model_aspects)), np.nan)
    ties = np.full_like(mat, np.nan)
    n = np.zeros_like(mat, dtype=int)
    for i, k in enumerate(rows):
        sel = pair_aspects == k
        for j in range(len(model_aspects)):
            d = scaled[sel, j]
            d = d[np.isfinite(d)]
            n[i, j] = len(d)
            if len(d):
                mat[i, j] = float(np.mean(d < 0))
                ties[i, j] = float(np.mean(d == 0))
    fig, ax = plt.subplots(figsize=(1.3 * len(model_aspects) + 2, 0.9 * len(rows) + 1.8))
    im = ax.imshow(np.nan_to_num(mat, nan=0.0), vmin=0, vmax=1, cmap="Reds")
    for i in range(len(rows)):
        for j in range(len(model_aspects)):
            if np.isfinite(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(model_aspects)), model_aspects, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("scoring aspect k'")
    ax.set_ylabel("labelled aspect k (D_k)")
    ax.set_title("share of D_k pairs that k' disagrees with")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    plt.close(fig)
    data = _clean({"rows": rows, "columns": list(model_aspects), "disagree": mat.tolist(),
                   "ties": ties.tolist(), "n": n.tolist()})
    _write_json(out / f"{name}.json", data)
    return data


def _word_lengths(texts, batch: int = 1 << 16) -> np.ndarray:
    """Words per text (len(str.split())); ``texts`` may be an Arrow column, read in batches
    (only one batch of Python strings at a time)."""
    import pyarrow as pa

    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        out = np.empty(len(texts), dtype=float)
        for start in range(0, len(texts), batch):
            part = texts.slice(start, batch).to_pylist()
            out[start:start + len(part)] = [len(str(t).split()) for t in part]
        return out
    return np.array([len(str(t).split()) for t in texts], dtype=float)


def length_distributions(before: pd.DataFrame, after: pd.DataFrame, out_dir: str | Path,
                         name: str = "length_distributions") -> dict:
    """Chosen / rejected lengths (words) and their difference, pool against selected subset."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, series = {}, {}
    for label, df in (("before", before), ("after", after)):
        lc, lr = _word_lengths(df["chosen"]), _word_lengths(df["rejected"])
        series[label] = {"chosen": lc, "rejected": lr, "difference": lc - lr}
        data[label] = {k: ({"mean": float(v.mean()), "median": float(np.median(v)),
                            "p90": float(np.quantile(v, 0.9))} if len(v) else None)
                       for k, v in series[label].items()}
        data[label]["n"] = int(len(df))
        data[label]["chosen_longer_fraction"] = float(np.mean(lc >= lr)) if len(df) else None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in zip(axes, ("chosen", "rejected", "difference")):
        allv = np.concatenate([series["before"][key], series["after"][key]])
        bins = np.linspace(allv.min(), allv.max(), 41) if len(allv) and allv.min() < allv.max() else 10
        for label, color in (("before", "lightgrey"), ("after", "tab:blue")):
            ax.hist(series[label][key], bins=bins, density=True, alpha=0.6, color=color,
                    label=f"{label} (n={data[label]['n']})")
        ax.set_title(f"{key} length (words)" if key != "difference" else "len(y_w) - len(y_l) (words)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    plt.close(fig)
    data = _clean(data)
    _write_json(out / f"{name}.json", data)
    return data


def reward_model_table(rows: list[dict], out_dir: str | Path, name: str = "reward_models") -> dict:
    """Held-out accuracy and length bias per reward model: a table PNG plus JSON."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = ["aspect", "n_train", "n_heldout", "heldout_accuracy", "heldout_accuracy_undebiased",
            "length_corr", "length_corr_undebiased"]
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(12, 0.4 * len(rows) + 1.2))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=["aspect", "train", "held-out", "accuracy",
                                                "acc. (no debias)", "length corr",
                                                "length corr (no debias)"], loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    ax.set_title("proxy reward models (held-out pairs)")
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    plt.close(fig)
    data = _clean({"rows": [{c: r.get(c) for c in cols + ["fingerprint", "mode", "backbone"]} for r in rows]})
    _write_json(out / f"{name}.json", data)
    return data
