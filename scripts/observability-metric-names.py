#!/usr/bin/env python3
"""Prints the metric names that the Grafana dashboard and the Prometheus alert rules query, one a line.

    scripts/observability-metric-names.py deploy/observability/grafana-dashboard.json deploy/observability/alerts.yaml

scripts/test-image.sh compares them with a live scrape of /metrics, so a panel or an alert can never watch a
series the server does not export (a typo, or a metric renamed in the sources). Needs PyYAML for the rules.

The names are read from the PromQL of every panel target, template variable and rule by dropping what cannot be
a metric name (strings, label matchers, ranges, grouping clauses, functions, keywords, numbers and durations).
"""

import json
import re
import sys

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_exprs(path: str) -> list[str]:
    exprs = []

    def walk(panels):
        for panel in panels:
            exprs.extend(target["expr"] for target in panel.get("targets", []) if target.get("expr"))
            walk(panel.get("panels", []))

    dashboard = json.load(open(path))
    walk(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        found = re.match(r"\s*(?:label_values|query_result)\((.*)\)\s*$", query)
        if found and variable.get("type") == "query":
            # label_values(metric, label): the metric is what matters.
            exprs.append(found.group(1).split(",")[0] if query.lstrip().startswith("label_values") else found.group(1))
    return exprs


def rule_exprs(path: str) -> list[str]:
    import yaml

    rules = yaml.safe_load(open(path))
    return [rule["expr"] for group in rules.get("groups", []) for rule in group.get("rules", [])]


def main() -> int:
    names = set()
    for path in sys.argv[1:]:
        exprs = dashboard_exprs(path) if path.endswith(".json") else rule_exprs(path)
        if not exprs:
            print(f"observability-metric-names: no query in {path}", file=sys.stderr)
            return 1
        for expr in exprs:
            names |= metric_names(expr)
    print("\n".join(sorted(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
