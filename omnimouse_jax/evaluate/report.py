"""`omnimouse evaluate`: a trained workdir in every regime, with baselines beside it, as JSON and paper-style tables.

    omnimouse evaluate --workdir W [--regimes all|paper|a,b] [--split test] [--out W/eval.json]
        [--baselines mean,persistence,ridge,cnn,ln|none] [--baseline-workdirs NAME=W2,...] [--max-batches N]
        [--sensorium-submission FILE.parquet] [--save-predictions a,b] [--no-ablation]

Writes eval.json (see evaluate/regimes.py for its keys) and eval.md (the tables) and prints the paper-style table and
the input-ablation warnings.
"""
from __future__ import annotations


def default_out_name(split: str) -> str:
    """eval.json for the test split (what `sweep --collect` reads), eval_<split>.json for any other, so scoring
    another split never replaces the test results."""
    return "eval.json" if split == "test" else f"eval_{split}.json"


# --- tables -----------------------------------------------------------------------------------------------------------

def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def planted_markdown(planted_r2: dict) -> str:
    """{session: {parameter: R^2}} as a table, one row per session."""
    names = list(next(iter(planted_r2.values())))
    return _markdown_table(["session", *names], [[session, *(_cell(r2[n]) for n in names)]
                                                 for session, r2 in planted_r2.items()])


def paper_markdown(result: dict) -> str:
    """The paper's results table: one row per predictor, one column per paper column; on digital mice also each
    predictor's fraction of the ground-truth ceiling."""
    table, columns = result["table"], list(result["columns"])
    rows = list(next(iter(table.values())))
    text = [f"Single-trial correlation, split {result['split']!r}, step {result['step']} ({result['workdir']})", "",
            _markdown_table(["", *columns], [[row, *(_cell(table[c][row]) for c in columns)] for row in rows])]
    if "ceiling" in rows:
        fractions = result["fraction_table"]
        text += ["", "Fraction of the ground-truth ceiling", "",
                 _markdown_table(["", *columns], [[row, *(_cell(fractions[c][row]) for c in columns)]
                                                  for row in rows if row != "ceiling"])]
    return "\n".join(text)


def ablation_warnings(result: dict) -> list[str]:
    """One WARNING line per input that the model does not use in some regime (result["ablation"]["unused"])."""
    ablation = result.get("ablation")
    if not ablation:
        return []
    return [f"WARNING: the model does not use the {name} in regimes {', '.join(regimes)} (shuffling it across "
            f"windows lowers {ablation['metric']} by less than {ablation['min_drop']:g})"
            for name, regimes in ablation["unused"].items() if regimes]


def ablation_markdown(result: dict, heading: str = "##") -> str:
    """The "Input ablation" section (under a `heading` title): the table (regime, intact, each input shuffled, each
    drop) and its warnings; "" when the evaluation has no ablation."""
    entries = {p: e["ablation"] for p, e in result["regimes"].items() if "ablation" in e}
    if not entries or not result.get("ablation"):
        return ""
    ablation = result["ablation"]
    names = [n for n in ablation["unused"] if any(n in e for e in entries.values())]
    value = lambda entry, name, key: entry.get(name, {}).get(key)  # noqa: E731
    rows = [[preset, _cell(entry["intact"][ablation["metric"]]),
             *(_cell(value(entry, n, ablation["metric"])) for n in names),
             *(_cell(value(entry, n, "drop")) for n in names)] for preset, entry in entries.items()]
    first = next(iter(entries.values()))
    text = [f"{heading} Input ablation", "",
            f"The model's {ablation['metric']} with each input taken from another window ({ablation['donors']}; the "
            f"masks unchanged); drop = intact - shuffled. {first['examples']} examples scored"
            + (f", {first['excluded']} without a donor left out" if first["excluded"] else "") + ".", "",
            _markdown_table(["regime", "intact", *(f"{n} shuffled" for n in names), *(f"drop ({n})" for n in names)],
                            rows)]
    warnings = ablation_warnings(result)
    return "\n".join(text + ([""] + warnings if warnings else []))


def _primary(metrics: dict) -> str | None:
    for key in ("response/correlation", "behavior/correlation"):
        if key in metrics:
            return key
    return None


def markdown(result: dict) -> str:
    """eval.md: the paper-style table, then every regime's main metric for every predictor."""
    rows = list(next(iter(result["table"].values())))
    per_regime = []
    for preset, entry in result["regimes"].items():
        key = _primary(entry["model"])
        sources = {"model": entry["model"], "ceiling": entry.get("ceiling", {}), **entry["baselines"]}
        per_regime.append([preset, key or "–", *(_cell(sources.get(row, {}).get(key)) for row in rows)])
    parts = ["# Evaluation", "", paper_markdown(result), "", "## Every regime", "",
             _markdown_table(["regime", "metric", *rows], per_regime)]
    if result["presets_skipped"]:
        parts += ["", "Skipped (do not fit this model): " + ", ".join(result["presets_skipped"]) + "."]
    tiers = sorted({t for entry in result["regimes"].values() for t in entry.get("model_by_tier", {})})
    if tiers:
        by_tier = [[preset, _primary(entry["model"]) or "–",
                    *(_cell(entry["model_by_tier"].get(t, {}).get(_primary(entry["model"]))) for t in tiers)]
                   for preset, entry in result["regimes"].items() if "model_by_tier" in entry]
        parts += ["", f"## The model per tier of split {result['split']!r}", "",
                  _markdown_table(["regime", "metric", *tiers], by_tier)]
    ablation = ablation_markdown(result)
    if ablation:
        parts += ["", ablation]
    if result.get("planted_r2"):
        parts += ["", "## Planted neuron parameters read from the learned embeddings", "",
                  "Cross-validated R^2 of a linear map from each neuron's embedding to its ground-truth parameter "
                  "(omnimouse planted); near 0: not learned.", "", planted_markdown(result["planted_r2"])]
    evaluation = result["evaluation"]
    parts += ["", f"{evaluation['batches']} of {evaluation['total_batches']} evaluation batches of "
                  f"{evaluation['batch_size']} windows (stride {evaluation['window_stride']}); baselines fit on "
                  f"{evaluation['train_batches']} training batches. Store: {result['store']}.", ""]
    return "\n".join(parts)
