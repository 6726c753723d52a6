#!/usr/bin/env python3
"""Check that a file of Prometheus text (the coordinator's GET /metrics) parses.

Uses prometheus_client's own parser (text_string_to_metric_families) and fails on any
parse error, on an empty exposition (likely a failed scrape), and on a series exposed
twice (the parser accepts it; a Prometheus server rejects the scrape).
Usage: check_metrics.py FILE
"""

import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    if len(sys.argv) != 2:
        print("usage: check_metrics.py FILE", file=sys.stderr)
        return 2
    path = sys.argv[1]
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        print(f"error: metrics: cannot read {path}: {e}", file=sys.stderr)
        return 1
    families = samples = 0
    seen = set()
    try:
        # The parser is lazy: errors surface while iterating, so walk every sample.
        for fam in text_string_to_metric_families(text):
            families += 1
            for s in fam.samples:
                samples += 1
                series = (s.name, tuple(sorted(s.labels.items())))
                if series in seen:
                    raise ValueError(f"series {s.name}{dict(s.labels)} appears twice")
                seen.add(series)
    except Exception as e:  # the parser raises ValueError and others on bad input
        print(f"error: metrics: {path} is not valid Prometheus text: {e}", file=sys.stderr)
        return 1
    if families == 0:
        print(f"error: metrics: {path} holds no metric family", file=sys.stderr)
        return 1
    print(f"metrics: {path}: {families} families, {samples} samples parse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
