"""A one-line reading of a results table, generated from its numbers: what a report says first.

Two questions a reader of an autoencoder's numbers asks before any other:

    reconstruction   is it better than PCA with as many components as the code has dimensions (the best linear
                     code of that size, fitted in closed form)? "ae reconstructs 1% better than PCA-20; vae 15%
                     worse (likely undertrained)" from recon_sse / pca_sse - 1.
    codes            do its codes make the classes easier to separate than the raw pixels? The probe accuracy on
                     the codes against the same probe on the pixels: "Neither model's codes beat raw pixels on the
                     probe (0.873, 0.861 vs 0.900)."

A model is called likely undertrained when it reconstructs worse than PCA (aelab.metrics.convergence's rule) or
when one of its warnings says so. Binary codes are not compared with PCA (k bits hold far less than k real
components), nor codes with as many dimensions as the images have pixels (there is then no sse_ratio_to_pca).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# under this relative difference the two are called equal: float noise, not a result
EQUAL_PERCENT = 0.05


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def percent(p: float) -> str:
    """|p| as a percentage with the digits it deserves: '15%', '1%', '0.4%', '0.06%'."""
    p = abs(p)
    return f"{p:.0f}%" if p >= 1 else f"{p:.1g}%"


HARD_CH = frozenset({"epoch", "stomach", "monarch"})


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 seed', '2 seeds', '1 pass', '3 passes': the count and the word in the number it needs."""
    if n == 1:
        return f"{n} {word}"
    if many is None and word.endswith("ch") and word in HARD_CH:
        many = word + "s"  # "epoch": a hard ch, "epochs" (not "epoches"); "batch" -> "batches"
    return f"{n} {many or (word + 'es' if word.endswith(('s', 'sh', 'ch', 'x')) else word + 's')}"


def _undertrained(entry: dict) -> bool:
    m = entry["metrics"]
    worse = _number(m.get("recon_sse")) and _number(m.get("pca_sse")) and m["recon_sse"] > m["pca_sse"]
    return bool(worse and _compared_with_pca(entry)) or any("undertrained" in str(w) for w in entry.get("warnings", ()))


def _compared_with_pca(entry: dict) -> bool:
    m = entry["metrics"]
    return (
        not entry.get("binary_code", False)
        and _number(m.get("recon_sse"))
        and _number(m.get("pca_sse"))
        and m["pca_sse"] > 0
        and isinstance(m.get("code_dim"), int)
        and "sse_ratio_to_pca" in m  # evaluate leaves it out when the code is as large as the image: PCA is exact
    )


def reconstruction_sentence(entries: Sequence[dict]) -> str | None:
    """'ae reconstructs 1% better than PCA-20; vae 15% worse (likely undertrained).' None when no entry has the
    numbers. Each entry: {"name", "metrics", optional "warnings", "binary_code"}."""
    shown = [e for e in entries if _compared_with_pca(e)]
    if not shown:
        return None
    same_size = len({e["metrics"]["code_dim"] for e in shown}) == 1
    clauses = []
    for i, entry in enumerate(shown):
        m = entry["metrics"]
        change = 100 * (m["recon_sse"] / m["pca_sse"] - 1)
        pca = f"PCA-{m['code_dim']}"
        if abs(change) < EQUAL_PERCENT:
            how = f"as well as {pca}" if i == 0 or not same_size else "as well"
        else:
            direction = "better" if change < 0 else "worse"
            than = f" than {pca}" if i == 0 or not same_size else ""
            size = percent(change) if change < 100 else f"{m['recon_sse'] / m['pca_sse']:.2g} times"  # 3.3 times worse
            how = f"{size} {direction}{than}"
        verb = "reconstructs " if i == 0 else ""
        clauses.append(f"{entry['name']} {verb}{how}" + (" (likely undertrained)" if _undertrained(entry) else ""))
    return "; ".join(clauses) + "."


def probe_sentence(entries: Sequence[dict]) -> str | None:
    """Whether each entry's codes beat the raw pixels on the linear probe: 'Neither model's codes beat raw pixels
    on the probe (0.873, 0.861 vs 0.900).' None when no entry has both accuracies."""
    shown = [e for e in entries if _number(e["metrics"].get("probe_accuracy"))]
    shown = [e for e in shown if _number(e["metrics"].get("raw_probe_accuracy"))]
    if not shown:
        return None
    codes = [e["metrics"]["probe_accuracy"] for e in shown]
    raws = [e["metrics"]["raw_probe_accuracy"] for e in shown]
    beats = [c > r for c, r in zip(codes, raws)]
    if len({round(r, 12) for r in raws}) > 1:  # other data or splits: each with its own pixel baseline
        clauses = [f"{e['name']}'s codes {'beat' if b else 'do not beat'} raw pixels ({c:.3f} vs {r:.3f})"
                   for e, c, r, b in zip(shown, codes, raws, beats)]  # fmt: skip
        return "On the probe, " + "; ".join(clauses) + "."
    raw = f"{raws[0]:.3f}"
    values = ", ".join(f"{c:.3f}" for c in codes)
    if len(shown) == 1:
        (entry,) = shown
        verb = "beat" if beats[0] else "do not beat"
        return f"{entry['name']}'s codes {verb} raw pixels on the probe ({values} vs {raw})."
    if all(beats) or not any(beats):
        who = ("Both models'" if len(shown) == 2 else "Every model's") if all(beats) else (
            "Neither model's" if len(shown) == 2 else "None of the models'")  # fmt: skip
        return f"{who} codes beat raw pixels on the probe ({values} vs {raw})."
    winners = [f"{e['name']} ({c:.3f})" for e, c, b in zip(shown, codes, beats) if b]
    losers = [f"{e['name']} ({c:.3f})" for e, c, b in zip(shown, codes, beats) if not b]
    return (
        f"The codes of {', '.join(winners)} beat raw pixels on the probe ({raw}); those of {', '.join(losers)} do not."
    )


def reading(entries: Sequence[dict], means_of: int | None = None) -> str | None:
    """The one line a report opens with: the reconstruction sentence, then the probe sentence (None when the
    table has neither). `means_of`: the numbers are means over that many seeds (said at the end)."""
    sentences = [s for s in (reconstruction_sentence(entries), probe_sentence(entries)) if s]
    if not sentences:
        return None
    text = " ".join(sentences)  # names stay as written (run folders, model names): never re-capitalised
    if means_of:
        text += f" (Means over {plural(means_of, 'seed')}.)"
    return text


def display_name(model: str) -> str:
    """A model's registry name as a reader writes it: 'ae' -> 'AE', 'deep-ae' -> 'DEEP-AE'."""
    return model.upper()
