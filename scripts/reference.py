"""Writes the configuration, metrics and alerts references into README.md from the code
itself, so that they cannot drift: every flag with its JOBWIRE_* variable from the argument
parsers, every metric from the metric definitions, every alert from the rules file.

    python scripts/reference.py          # rewrite the generated parts of README.md
    python scripts/reference.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

README = Path(__file__).resolve().parent.parent / "README.md"
_ENV = re.compile(r"\s*\[(JOBWIRE_[A-Z0-9_]+)\]$")
# Commands whose flags are listed in a section of their own; the producer and operator
# commands share theirs, so they are listed once together.
_OWN_SECTION = ("scheduler", "worker", "migrate", "dev", "bench")


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value == [] or isinstance(action, argparse._StoreTrueAction):
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return f"`{value}`"


def _flags(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, str, str]]:
    """(flag, variable, default, meaning) of every option that has a variable."""
    for action in parser._actions:
        match = _ENV.search(action.help or "")
        if not match or not action.option_strings:
            continue
        flag = " / ".join(action.option_strings)
        if not isinstance(action, argparse.BooleanOptionalAction):
            flag = max(action.option_strings, key=len)
        meaning = _ENV.sub("", action.help or "").replace("%%", "%")
        yield f"`{flag}`".replace(" / ", "` / `"), f"`{match[1]}`", _default(action), meaning


def _table(rows: Iterable[tuple[str, str, str, str]]) -> list[str]:
    lines = [_row(("flag", "variable", "default", "meaning")), _row(("---",) * 4)]
    lines += [_row(r) for r in rows]
    return lines


def configuration() -> str:
    from jobwire.cli.main import build_parser

    parser = build_parser()
    commands: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = dict(action.choices)
    out = [
        "Every flag can also be set with its environment variable; a flag on the command "
        "line wins. Generated from the code by `make docs`.",
        "",
        "**Every command** (`jobwire --log-format text scheduler ...`):",
        "",
        *_table(_flags(parser)),
    ]
    for name in _OWN_SECTION:
        out += ["", f"**`jobwire {name}`**:", "", *_table(_flags(commands[name]))]
    shared: dict[str, tuple[str, str, str, str]] = {}
    names = [n for n in commands if n not in _OWN_SECTION]
    for name in names:
        for row in _flags(commands[name]):
            shared.setdefault(row[1], row)
    listed = ", ".join(f"`{n}`" for n in names)
    out += ["", f"**Producer and operator commands** ({listed}):", "", *_table(shared.values())]
    from jobwire.worker import mailer

    out += [
        "",
        "**The `email` job type** (worker, environment only: credentials never go on a "
        "command line):",
        "",
        _row(("variable", "default", "meaning")),
        _row(("---",) * 3),
        *(
            _row((f"`{v.name}`", f"`{v.default}`" if v.default else "", v.meaning))
            for v in mailer.ENVIRONMENT
        ),
    ]
    return "\n".join(out)


def _metric_rows(modules: Iterable[ModuleType]) -> Iterator[tuple[str, str, str, str]]:
    from prometheus_client.metrics import MetricWrapperBase

    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                kind = obj._type
                name = obj._name + ("_total" if kind == "counter" else "")
                labels = ", ".join(obj._labelnames)
                yield f"`{name}`", kind, labels, obj._documentation


def metrics() -> str:
    from jobwire.scheduler import interceptor
    from jobwire.scheduler import metrics as scheduler_metrics
    from jobwire.worker import metrics as worker_metrics

    computed = [
        (f"`{g.name}`", "gauge", ", ".join(g.labels), g.documentation)
        for g in scheduler_metrics.COMPUTED_GAUGES
    ]
    header = [_row(("metric", "type", "labels", "meaning")), _row(("---",) * 4)]
    scheduler_rows = [*_metric_rows([scheduler_metrics]), *computed, *_metric_rows([interceptor])]
    return "\n".join(
        [
            "Generated from the code by `make docs`. Scheduler (`/metrics` on `--http-port`):",
            "",
            *header,
            *(_row(r) for r in scheduler_rows),
            "",
            "Worker (`/metrics` on its `--http-port`):",
            "",
            *header,
            *(_row(r) for r in _metric_rows([worker_metrics])),
        ]
    )


def alerts() -> str:
    import yaml

    rules = yaml.safe_load((README.parent / "deploy" / "prometheus" / "alerts.yml").read_text())
    lines = [
        "Generated from `deploy/prometheus/alerts.yml` by `make docs`; each alert's "
        "description there says what to check.",
        "",
        _row(("alert", "severity", "for", "summary")),
        _row(("---",) * 4),
    ]
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                summary = re.sub(r"\s*\{\{.*?\}\}\s*", " … ", rule["annotations"]["summary"])
                lines.append(
                    _row(
                        (
                            f"`{rule['alert']}`",
                            rule.get("labels", {}).get("severity", ""),
                            rule.get("for", "0s"),
                            summary.strip(),
                        )
                    )
                )
    return "\n".join(lines)


def render(readme: str) -> str:
    for name, text in (
        ("configuration", configuration()),
        ("metrics", metrics()),
        ("alerts", alerts()),
    ):
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        before, found, rest = readme.partition(start)
        if not found:
            raise SystemExit(f"README.md has no {start} marker")
        _, found, after = rest.partition(end)
        if not found:
            raise SystemExit(f"README.md has no {end} marker")
        readme = f"{before}{start}\n{text}\n{end}{after}"
    return readme


def main(argv: list[str]) -> int:
    current = README.read_text()
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print("README.md is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
