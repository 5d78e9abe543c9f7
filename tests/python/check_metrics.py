"""Reads `kiln serve`'s /metrics with the Prometheus project's own OpenMetrics parser
(prometheus-client) and prints every sample as JSON: one object with `families`, each with its
type, unit and samples (name, labels, value). Any text the parser rejects fails the script.

    python check_metrics.py METRICS_FILE
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = {
            "type": family.type,
            "unit": family.unit,
            "samples": [
                # NaN (a live accuracy with no feedback yet) is valid OpenMetrics, not JSON.
                {"name": s.name, "labels": s.labels, "value": None if s.value != s.value else s.value}
                for s in family.samples
            ],
        }
    print(json.dumps({"ok": True, "families": families}))


if __name__ == "__main__":
    main()
