"""The main metric of each task, the multi-task performance Delta_m, the paper-style results table, and the
one plain-text table formatter of the package (results, expert usage, routing agreement)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from tiger.tasks import TASKS


class _MainMetrics(Mapping[str, tuple[str, bool]]):
    """task -> (metric key, higher is better) of every registered task entry, in the papers' column order
    (a live view of :data:`tiger.tasks.TASKS`)."""

    def __getitem__(self, task: str) -> tuple[str, bool]:
        entry = TASKS[task]
        return entry.main_metric, entry.higher_is_better

    def __iter__(self) -> Iterator[str]:
        return iter(TASKS)

    def __len__(self) -> int:
        return len(TASKS)


MAIN_METRIC: Mapping[str, tuple[str, bool]] = _MainMetrics()


def main_values(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{task: {metric: value}} -> {task: value of its main metric}."""
    return {task: float(results[task][MAIN_METRIC[task][0]]) for task in MAIN_METRIC if task in results}


def multi_task_delta(
    results: Mapping[str, float],
    baselines: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """Delta_m in percent: mean over tasks j of (-1)^{l_j} (M_j - M_b,j) / M_b,j x 100, l_j = 1 where lower
    is better.

    Args:
        results: task -> value of its main metric (see :func:`main_values`).
        baselines: task -> the single-task baseline's value; every task of ``results`` needs one.
        higher_is_better: task -> direction; defaults to :data:`MAIN_METRIC`'s.
    """
    missing = sorted(set(results) - set(baselines))
    if missing:
        raise ValueError(f"no single-task baseline for tasks {missing}")
    if not results:
        raise ValueError("no task results to compare")
    terms = []
    for task, value in results.items():
        if higher_is_better is not None and task in higher_is_better:
            higher = higher_is_better[task]
        elif task in MAIN_METRIC:
            higher = MAIN_METRIC[task][1]
        else:
            raise ValueError(f"unknown direction for task {task!r}: pass higher_is_better")
        if baselines[task] == 0:
            raise ValueError(f"the baseline of task {task!r} is 0: Delta_m divides by it")
        sign = 1.0 if higher else -1.0
        terms.append(sign * (value - baselines[task]) / baselines[task])
    return 100.0 * sum(terms) / len(terms)


def format_table(
    rows: Mapping[str, Mapping[str, Mapping[str, float]]] | Mapping[str, Mapping[str, float]],
    tasks: Sequence[str] | None = None,
) -> str:
    """A plain-text table laid out like the papers: one column per task's main metric, in the papers' order.

    ``rows`` is either one result {task: {metric: value}} or several {row name: result}.
    """
    first = next(iter(rows.values()), {})
    single = bool(first) and all(isinstance(v, int | float) for v in first.values())
    named = {"": rows} if single or not rows else dict(rows)
    present = set(tasks) if tasks is not None else {t for result in named.values() for t in result}
    columns = [task for task in MAIN_METRIC if task in present]
    header = [TASKS[t].title + (" ↑" if MAIN_METRIC[t][1] else " ↓") for t in columns]
    body = [[_cell(result, t) for t in columns] for result in named.values()]
    if single:
        return text_table(header, body, index=False)
    return text_table(["", *header], [[name, *cells] for name, cells in zip(named, body, strict=True)])


def _cell(result: Mapping[str, Mapping[str, float]], task: str) -> str:
    if task not in result:
        return "-"
    entry = TASKS[task]
    return f"{result[task][entry.main_metric]:.{entry.decimals}f}"


def text_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, index: bool = True, rule: bool = False
) -> str:
    """Cells (already formatted strings) -> a plain-text table.

    Columns are two spaces apart and as wide as their widest cell; the first column holds the row names
    when ``index`` (left-aligned), every other column is right-aligned; ``rule`` draws a line of dashes
    under the header.
    """
    table = [list(header), *(list(row) for row in rows)]
    if any(len(row) != len(header) for row in table):
        raise ValueError(f"every row needs {len(header)} cells, got {[len(row) for row in table]}")
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            cell.ljust(width) if index and column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [line(table[0])]
    if rule:
        lines.append("-" * len(lines[0]))
    lines += [line(row) for row in table[1:]]
    return "\n".join(lines)
