"""Writes the PrometheusRule of deploy/kubernetes/monitoring from deploy/prometheus/rules.yml.

Usage: python tools/gen_prometheus_rule.py

rules.yml is the one source of the alerting rules: Prometheus loads it as a rule file
(docker-compose.yml), and Prometheus Operator takes the same groups as a PrometheusRule,
whose ``spec`` has the rule file's format. The groups are copied as text, comments included;
tests/test_deploy.py fails while the PrometheusRule differs from what this writes.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml"
HEADER = """\
# Generated from deploy/prometheus/rules.yml by tools/gen_prometheus_rule.py: edit rules.yml
# and run that script again. The alerting rules of tfps for Prometheus Operator, which loads
# a PrometheusRule whose labels its Prometheus's ruleSelector matches (see kustomization.yaml).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: tfps
  labels:
    app.kubernetes.io/name: tfps-server
    app.kubernetes.io/part-of: tfps
spec:
"""


def render(rules: str) -> str:
    """Returns the PrometheusRule manifest whose spec is the rule file ``rules``.

    Args:
        rules: the text of a Prometheus rule file; its leading comment lines are left out.

    Returns:
        The manifest's text: the header above, then the rule file indented under ``spec``.
    """
    lines = rules.splitlines()
    while lines and (not lines[0].strip() or lines[0].startswith("#")):
        lines.pop(0)
    return HEADER + "".join(f"  {line}\n" if line else "\n" for line in lines)


def main() -> None:
    """Rewrites the PrometheusRule from rules.yml."""
    PROMETHEUS_RULE.write_text(render(RULES.read_text()))


if __name__ == "__main__":
    main()
