"""Seeding a benchmark's work folder from the finished jobs of a results file.

A work folder lives on one machine; a results file (``<name>.json``) is committed next to its page.
It holds the full record of every headline job and of every grid job. `ImportedRecords` reads one,
checks that it ran with this run's options (every option that changes what a job computes, see
`aptune.bench.config.result_options`), and finds, for a planned job, the record of a finished run
that computed the same thing: the same method, seed, density, variant, APT overrides, learning
rate, allocator and dependencies. The harness writes that record into the work folder, marked with
``imported_from``, instead of training the job again (``aptune bench --import-results``).

Only the records move: the exported models stay on the machine that trained them. The results
file's latency measurements (``latency``: the exported models timed together in the sitting that
wrote it) seed a work folder that has none, so a page rewritten from imported jobs keeps them and
says where they came from; once a job trains here, the latency stage times the models this work
folder has, and only those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aptune.bench.config import BenchConfig, differing_options, result_options
from aptune.bench.plan import Job
from aptune.errors import ConfigError

__all__ = ["JOB_IDENTITY", "ImportedRecords"]

#: The `Job` fields that decide what a run computes (its id, label, phase and reuse link do not).
JOB_IDENTITY: tuple[str, ...] = (
    "method",
    "seed",
    "density",
    "variant",
    "apt_overrides",
    "lr",
    "allocator",
    "depends",
)


def _identity(job: dict[str, Any], skip: tuple[str, ...] = ()) -> tuple:
    return tuple(json.dumps(job.get(name), sort_keys=True) for name in JOB_IDENTITY if name not in skip)


#: Compared by what they resolve to, not as written: a variant whose overrides were restated when a
#: default changed (`aptune.bench.methods.apt_settings_mismatch` checks the settings).
_RESTATED: tuple[str, ...] = ("apt_overrides",)


@dataclass
class ImportedRecords:
    """The finished-job records of one results file that ran with a given run's options.

    Attributes:
        source: The results file.
        records: ``{job identity: record}`` (see `JOB_IDENTITY`).
        latency: The file's latency measurements (``latency.json`` of the work folder that wrote
            it), or ``None`` when it has none.
    """

    source: Path
    records: dict[tuple, dict[str, Any]]
    latency: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: str | Path, config: BenchConfig) -> ImportedRecords:
        """Read ``path`` and check it against ``config``.

        Raises:
            ConfigError: the file is missing, is not a results file, or ran with other options
                (the message names them).
        """
        source = Path(path)
        hint = "give the <name>.json written next to a benchmark page"
        if not source.is_file():
            raise ConfigError(f"--import-results {source}: no such file; {hint}")
        try:
            payload = json.loads(source.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"--import-results {source}: not JSON ({err}); {hint}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
            raise ConfigError(f"--import-results {source}: no benchmark options in it; {hint}")
        try:
            their_config = BenchConfig.from_dict(payload["config"])
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"--import-results {source}: its options do not load here ({err})") from None
        theirs, ours = result_options(their_config), result_options(config)
        differing = differing_options(their_config, config)
        if differing:
            shown = ", ".join(
                f"--{n.replace('_', '-')} {theirs.get(n)!r} (this run: {ours[n]!r})" for n in differing
            )
            raise ConfigError(f"--import-results {source} ran with other options: {shown}")
        records: dict[tuple, dict[str, Any]] = {}
        for group in ("grid_records", "results"):
            for record in (payload.get(group) or {}).values():
                if isinstance(record, dict) and isinstance(record.get("job"), dict):
                    records.setdefault(_identity(record["job"]), record)
        latency = payload.get("latency")
        has_timings = isinstance(latency, dict) and isinstance(latency.get("jobs"), dict)
        return cls(source, records, latency if has_timings else None)

    def find(self, job: Job) -> dict[str, Any] | None:
        """A copy of the record that computed ``job`` (its ``job`` field set to ``job``), or ``None``.

        A record of the same variant whose APT overrides were written differently (an ablation
        restated when a default changed) is returned too; the caller checks that its settings
        resolve to the job's (the harness's staleness check).
        """
        wanted = job.to_dict()
        record = self.records.get(_identity(wanted))
        if record is None:
            restated = _identity(wanted, _RESTATED)
            same = (r for r in self.records.values() if _identity(r["job"], _RESTATED) == restated)
            record = next(same, None)
        if record is None:
            return None
        copy = {k: v for k, v in record.items() if k != "reused_from"}
        copy.update(job=job.to_dict(), imported_from=str(self.source))
        return copy
