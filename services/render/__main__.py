"""`python -m services.render`: regenerate every committed rendering under compose/ (the compose files, their
Prometheus scrape configs, and the Grafana dashboards and alert rules of services/render/grafana.py) and k8s/
(services/render/k8s.py)."""

from __future__ import annotations

import sys

from . import k8s
from .compose import ROOT
from .compose_files import write_all


def main() -> int:
    written = write_all(ROOT / "compose")
    try:
        from . import grafana  # dashboards, provisioning and compose/prometheus/alerts.yml
    except ImportError as exc:  # its SDK missing: say so, keep the compose files
        print(f"grafana dashboards not rendered: {exc}", file=sys.stderr)
    else:
        written += grafana.write_all(ROOT / "compose")
    written += k8s.write_all(ROOT / "k8s")
    for path in written:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
