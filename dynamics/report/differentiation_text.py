"""The mechanism tables of a study cube: where the top set's differentiated pairs lie (negative,
positive or straddling pre-activations) against the random control, layer by layer; the most
frequent differentiated token pairs of the first layers; the POS enrichment of the pairs' tokens
with bootstrap CIs over neurons; the overlap of the WD and MD top sets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import xarray as xr

from dynamics.report.tables import text_table as table
from dynamics.stats.cohort import top_percent_mask
from dynamics.stats.differentiation import REGIONS
from dynamics.stats.enrichment import enrichment_difference

#: Universal POS tags shown in the enrichment table (the rest are rare in running text).
SHOWN_POS = ("DET", "ADP", "AUX", "PRON", "PART", "CCONJ", "SCONJ", "PUNCT", "NOUN", "VERB", "ADJ", "ADV", "PROPN")


def has_differentiation(ds: xr.Dataset) -> bool:
    return "diff_region_frac" in ds and ds.sizes.get("diff_member", 0) > 0


def region_table(ds: xr.Dataset) -> tuple[list[str], list[list[str]]]:
    """Per layer, the mean share of differentiated pairs in each region, top set and random control."""
    header = ["layer"] + [f"{s} {r}" for s in ("top", "random") for r in REGIONS] + ["top n", "random n"]
    rows = []
    layers = ds["diff_member_layer"].values
    for layer in sorted(set(layers.tolist())):
        here = layers == layer
        cells = [str(layer)]
        counts = []
        for name in ("top", "random"):
            chosen = here & np.asarray(ds[f"diff_member_in_{name}"].values, dtype=bool)
            fractions = ds["diff_region_frac"].values[chosen]
            means = np.nanmean(fractions, axis=0) if chosen.any() else np.full(len(REGIONS), np.nan)
            cells += [f"{m:.2f}" for m in means]
            counts.append(str(int(chosen.sum())))
        rows.append(cells + counts)
    return header, rows


def frequent_pairs(ds: xr.Dataset, layers: range = range(4), count: int = 10) -> list[tuple[str, str, int]]:
    """The ``count`` most frequent unordered token pairs (as text) among the top set's differentiated
    pairs in ``layers``."""
    chosen = np.isin(ds["diff_member_layer"].values, list(layers)) & np.asarray(ds["diff_member_in_top"].values, bool)
    texts = np.asarray(ds["diff_token_text"].values, dtype=object)
    counter: Counter[tuple[str, str]] = Counter()
    for pair in ds["diff_pair_token"].values[chosen].reshape(-1, 2):
        if (pair >= 0).all():
            a, b = sorted((str(texts[pair[0]]), str(texts[pair[1]])))
            counter[(a, b)] += 1
    return [(a, b, n) for (a, b), n in counter.most_common(count)]


def enrichment_rows(ds: xr.Dataset, n_boot: int = 1000, seed: int = 0) -> tuple[list[str], list[list[str]]] | None:
    """The POS share of the top set's and the random control's pair tokens against the base rate of all
    analysed tokens, and the top-minus-random difference with its CI (None without POS tags)."""
    if "diff_token_pos" not in ds:
        return None
    tags = [str(t) for t in np.asarray(ds["diff_token_pos"].values).tolist()]
    names = sorted(set(tags))
    codes = np.asarray([names.index(t) for t in tags], dtype=np.int64)
    pairs = ds["diff_pair_token"].values
    top = pairs[np.asarray(ds["diff_member_in_top"].values, bool)]
    random = pairs[np.asarray(ds["diff_member_in_random"].values, bool)]
    if not len(top) or not len(random):
        return None
    result = enrichment_difference(top, random, codes, len(names), n_boot=n_boot, seed=seed)
    header = ["POS", "base share", "top share", "random share", "top - random", "95% CI"]
    rows = []
    base = np.bincount(codes, minlength=len(names)) / len(codes)
    for tag in SHOWN_POS:
        if tag not in names:
            continue
        g = names.index(tag)
        low, high = float(result["difference_low"][g]), float(result["difference_high"][g])
        rows.append(
            [
                tag,
                f"{base[g]:.3f}",
                f"{float(result['mean_share_a'][g]):.3f}",
                f"{float(result['mean_share_b'][g]):.3f}",
                f"{float(result['difference'][g]):+.3f}",
                f"[{low:+.3f}, {high:+.3f}]",
            ]
        )
    return header, rows


def rank_overlap_rows(ds: xr.Dataset) -> tuple[list[str], list[list[str]]] | None:
    """Per layer, the Jaccard overlap of the top sets chosen by WD and by MD at the headline percent."""
    if "md" not in ds or "wd" not in ds or "top_mask" not in ds:
        return None
    percent = float(ds.attrs.get("provenance", {}).get("config", {}).get("match_percent", 1.0))
    by_wd = top_percent_mask(torch.from_numpy(np.nan_to_num(ds["wd"].values, nan=-np.inf)), percent).numpy()
    by_md = top_percent_mask(torch.from_numpy(np.nan_to_num(ds["md"].values, nan=-np.inf)), percent).numpy()
    rows = []
    for layer in range(by_wd.shape[0]):
        union = (by_wd[layer] | by_md[layer]).sum()
        both = (by_wd[layer] & by_md[layer]).sum()
        rows.append([str(layer), str(int(by_wd[layer].sum())), f"{both / union:.2f}" if union else "-"])
    return ["layer", "neurons", "Jaccard(WD top, MD top)"], rows


def differentiation_report(ds: xr.Dataset) -> str:
    """Every mechanism table the cube can give, as text ("" when it has no differentiation data)."""
    parts = []
    if has_differentiation(ds):
        header, rows = region_table(ds)
        parts += ["differentiated pairs by pre-activation region (mean share over neurons):", table(header, rows)]
        pairs = frequent_pairs(ds)
        if pairs:
            parts += [
                "most frequent differentiated token pairs of the top set, layers 0-3:",
                table(["token", "token", "pairs"], [[repr(a), repr(b), str(n)] for a, b, n in pairs]),
            ]
        enrichment = enrichment_rows(ds)
        if enrichment is not None:
            parts += ["POS of the differentiated pairs' tokens (CI: bootstrap over neurons):", table(*enrichment)]
    overlap = rank_overlap_rows(ds)
    if overlap is not None:
        parts += ["top sets by WD and by MD:", table(*overlap)]
    return "\n\n".join(parts)
