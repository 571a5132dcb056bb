"""Results of a sweep as files: ``results.json``, ``results.csv``, ``results.md`` (accuracy vs budget, one row per
method) and ``accuracy_vs_budget.png`` (one line per method, the uncompressed model as a dashed line)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from .runner import FULL, EvalResults, SettingResult

logger = logging.getLogger(__name__)


def _budget_label(budget: int | float | None) -> str:
    return "full" if budget is None else str(budget)


def markdown_table(results: EvalResults) -> str:
    """Methods as rows, budgets as columns; a cell is ``metric (relative to full %)``, the metric in percent.

    The last column gives the mean number of visual tokens per image that the language model saw, per budget.
    """
    compressed = [row for row in results.rows if row.method != FULL]
    budgets = list(dict.fromkeys(row.budget for row in compressed))
    methods = list(dict.fromkeys(row.method for row in compressed))
    cell = {(row.method, row.budget): row for row in compressed}
    metric = results.primary_metric
    # the relative figure exists only when the uncompressed reference was run (not with --no-full)
    relative = " (% of the uncompressed model's)" if any(row.relative is not None for row in compressed) else ""
    lines = [
        f"{results.task}, {results.num_samples} samples, {metric}{relative} by visual-token budget",
        "",
        "| method | " + " | ".join(_budget_label(b) for b in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for method in methods:
        cells = []
        for budget in budgets:
            row = cell.get((method, budget))
            cells.append("–" if row is None else _format_cell(row, metric))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    full = results.full
    if full is not None:
        lines.append(
            f"| full ({full.tokens_after:.0f} tokens) | "
            + " | ".join([_format_cell(full, metric)] * len(budgets))
            + " |"
        )
    if compressed:
        tokens = [
            next(f"{row.tokens_after:.1f}" for row in compressed if row.budget == budget)
            for budget in budgets
        ]
        lines.append("| *visual tokens kept* | " + " | ".join(tokens) + " |")
    return "\n".join(lines) + "\n"


# metrics reported as points rather than fractions (MME's scores)
_POINT_METRICS = ("total", "perception", "cognition")


def _format_cell(row: SettingResult, metric: str) -> str:
    value = f"{row.primary:.1f}" if metric in _POINT_METRICS else f"{100 * row.primary:.1f}"
    return value if row.relative is None else f"{value} ({100 * row.relative:.0f}%)"


def write_csv(results: EvalResults, path: Path) -> None:
    metric_names = list(dict.fromkeys(name for row in results.rows for name in row.metrics))
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                "task",
                "method",
                "budget",
                "tokens_before",
                "tokens_after",
                results.primary_metric,
                "relative",
                "num_samples",
                *(f"metric:{name}" for name in metric_names),
            ]
        )
        for row in results.rows:
            writer.writerow(
                [
                    results.task,
                    row.method,
                    _budget_label(row.budget),
                    f"{row.tokens_before:.2f}",
                    f"{row.tokens_after:.2f}",
                    f"{row.primary:.6f}",
                    "" if row.relative is None else f"{row.relative:.6f}",
                    row.num_samples,
                    *(f"{row.metrics[name]:.6f}" if name in row.metrics else "" for name in metric_names),
                ]
            )


def plot(results: EvalResults, path: Path) -> None:
    """Headline metric against the mean number of visual tokens kept, one line per method; beside it the same
    relative to the uncompressed model when that was run (and scored above 0)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "the accuracy plot needs matplotlib: pip install matplotlib (or vlm_compress[eval])"
        ) from err
    full = results.full
    with_relative = full is not None and bool(full.primary)
    figure, panels = plt.subplots(
        1, 2 if with_relative else 1, figsize=(11 if with_relative else 6, 4), dpi=120, squeeze=False
    )
    compressed = [row for row in results.rows if row.method != FULL]
    for panel, relative in zip(panels[0], (False, True)):
        for method in dict.fromkeys(row.method for row in compressed):
            points = sorted(
                (row.tokens_after, 100 * row.relative if relative else row.primary)
                for row in compressed
                if row.method == method and (row.relative is not None or not relative)
            )
            panel.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        if full is not None:
            panel.axhline(
                100 if relative else full.primary,
                color="black",
                linestyle="--",
                linewidth=1,
                label=f"full ({full.tokens_after:.0f} tokens)",
            )
        panel.set_xlabel("visual tokens per image")
        panel.set_ylabel(f"% of full {results.primary_metric}" if relative else results.primary_metric)
        panel.grid(alpha=0.3)
        panel.legend(fontsize=8)
    figure.suptitle(f"{results.task} ({results.model}, {results.num_samples} samples)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_reports(results: EvalResults, output_dir: str | Path, *, with_plot: bool = True) -> dict[str, Path]:
    """Write the JSON, CSV, Markdown and (``with_plot``) PNG reports; returns their paths by kind."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(results.to_dict(), indent=2) + "\n", encoding="utf-8")
    write_csv(results, paths["csv"])
    paths["markdown"].write_text(markdown_table(results), encoding="utf-8")
    if with_plot:
        paths["plot"] = out / "accuracy_vs_budget.png"
        plot(results, paths["plot"])
    return paths
