"""Compatibility import path: tests/test_dockerfile.py and tests/test_prometheus_scrape.py still import
`tests.k8s_support`; the helpers live in tests/deploy/k8s_support.py since the test-layout move."""

from tests.deploy.k8s_support import CHART, REPO, TOOLS_SH

__all__ = ["CHART", "REPO", "TOOLS_SH"]
