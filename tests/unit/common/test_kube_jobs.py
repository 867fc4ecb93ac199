"""Training Jobs from the trainer CronJob (`bailu.common.kube_jobs`): the Job's name.

What the built Job holds is checked through the real `kubernetes` client against a small API server, in
`tests/integration/test_trigger_runners.py` (the collector) and `tests/integration/test_cli_retrain.py`
(`bailu retrain`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from bailu.common.kube_jobs import job_name

STARTED_AT = datetime(2025, 6, 2, 10, 15, 30, tzinfo=UTC)
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize(
    ("cronjob", "version"),
    [
        ("bailu-trainer", "v000001"),
        ("a-release-name-that-is-quite-long-indeed-for-a-helm-release-trainer", "v000001"),
        ("Bailu_Trainer", "2025-06-02T10:15:30Z.abc/def"),
        ("trainer", "---"),
    ],
)
def test_job_names_are_dns_labels_of_at_most_63_characters(cronjob: str, version: str) -> None:
    name = job_name(cronjob, version, STARTED_AT)
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name), name
    assert name.endswith("-20250602101530")
    assert name.startswith(cronjob[:10].lower().replace("_", "-"))
