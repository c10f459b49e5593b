"""Reading and writing a run report: ``report.json``, ``plots/*.png`` and ``report.md``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aptune.atomic import write_text_atomic
from aptune.errors import DataError
from aptune.report.page import render_markdown
from aptune.report.plots import write_plots
from aptune.report.recorder import REPORT_SCHEMA_VERSION, RunRecorder
from aptune.report.summary import summarize
from aptune.report.values import to_jsonable

__all__ = ["load_report", "write_report"]

JSON_NAME = "report.json"
MD_NAME = "report.md"
PLOTS_DIR = "plots"


def _dump_json(value: Any, indent: int = 0) -> str:
    """Readable JSON: objects indented, but lists of scalars and flat rows kept on one line each.

    A run of thousands of steps then takes one line per step instead of a dozen.
    """
    pad, inner = "  " * indent, "  " * (indent + 1)

    def flat(v: Any) -> bool:
        if isinstance(v, dict):
            return all(not isinstance(x, (dict, list)) for x in v.values())
        if isinstance(v, list):
            return all(not isinstance(x, (dict, list)) for x in v)
        return True

    if isinstance(value, dict) and value and not (indent > 0 and flat(value) and len(value) <= 16):
        items = [f"{inner}{json.dumps(k)}: {_dump_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and not flat(value):
        items = [f"{inner}{_dump_json(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def load_report(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run's ``report.json``.

    Args:
        run_dir: The run folder (or the path of ``report.json`` itself).

    Returns:
        The report dict, as written by :func:`write_report`.

    Raises:
        DataError: the file is missing, unreadable, not JSON, not a JSON object, or written by a newer
            report schema than this aptune reads.
    """
    path = Path(run_dir)
    if path.is_dir() or path.suffix != ".json":
        path = path / JSON_NAME
    if not path.is_file():
        raise DataError(
            f"no report found: {path} does not exist; pass the folder of a finished run "
            "(write_report creates report.json there)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "the file is corrupt, re-create it with write_report"
        ) from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, expected an object (a run report)")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DataError(f"{path} has no integer 'schema_version'; it is not an aptune run report")
    if version > REPORT_SCHEMA_VERSION:
        raise DataError(
            f"{path} uses report schema {version}, newer than this aptune reads ({REPORT_SCHEMA_VERSION}); "
            "upgrade aptune"
        )
    return data


def write_report(
    run_dir: str | os.PathLike[str], report: Mapping[str, Any] | RunRecorder, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``report.json``, ``plots/*.png`` and ``report.md`` into ``run_dir``.

    Each file is written atomically (temporary file in the same folder, then ``os.replace``).
    ``report.json`` is written first, so a failure while plotting never loses the numbers; a plot whose
    data is missing (no evaluations, no salience snapshot, ...) is skipped, and a plot that fails for
    any other reason is skipped with a logged warning. ``report.md`` embeds only the plots written by
    this call. Plots are drawn without ``pyplot`` and without touching matplotlib's backend.

    Args:
        run_dir: Output folder (created if missing).
        report: A :class:`RunRecorder` or a report dict (e.g. from :func:`load_report`); the ``summary``
            block is recomputed from the other fields.
        plots: Draw the PNG plots.

    Returns:
        ``{file name: path}`` of the files written: ``"report.json"``, ``"report.md"`` and one entry per
        plot written (``"density.png"``, ``"structure.png"``, ``"ranks.png"``, ``"loss.png"``,
        ``"salience.png"``; the files are in ``run_dir/plots/``).

    Raises:
        TypeError: ``report`` is neither a recorder nor a dict, or holds values with no JSON form.
        OSError: a file cannot be written.
    """
    if isinstance(report, RunRecorder):
        data = report.to_dict()
    elif isinstance(report, Mapping):
        data = to_jsonable(report, "report")
        data.setdefault("schema_version", REPORT_SCHEMA_VERSION)
        data["summary"] = summarize(data)
    else:
        raise TypeError(f"write_report expects a RunRecorder or a dict, got {type(report).__name__}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    json_path = run_dir / JSON_NAME
    write_text_atomic(json_path, _dump_json(data) + "\n")
    written[JSON_NAME] = json_path

    if plots:
        written.update(write_plots(data, run_dir / PLOTS_DIR))

    md_path = run_dir / MD_NAME
    plot_links = {
        name: path.relative_to(run_dir).as_posix() for name, path in written.items() if name.endswith(".png")
    }
    write_text_atomic(md_path, render_markdown(data, plot_links))
    written[MD_NAME] = md_path
    return written
