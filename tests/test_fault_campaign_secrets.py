"""No configured secret in anything the proxy emits under a slice of the fault campaign: every
response body and header, stderr (access log, warnings), the trace file and /metrics. The slice
has an upstream that echoes its key in error.message/param/code, a body cut half-way, a checker
whose critique carries its env token and a verifier that echoes its Authorization header."""

from __future__ import annotations

import base64

import pytest

from bench.faults import SECRETS, Campaign
from bench.faults_capture import Sink, found, proxy_output

FAULTS = ["none", "echo_key", "reset_mid_body", "fail_rate=1@fail_status=500"]


@pytest.mark.parametrize("backend", ["lean", "litellm"])
def test_no_secret_leaves_the_proxy_under_the_campaign(backend):
    sink = Sink()
    with proxy_output(sink):  # stderr and the log handlers `itsproxy serve` installs
        campaign = Campaign(FAULTS, backend, sink)
        try:
            rows = campaign.fault_rows() + (campaign.checker_rows() if backend == "lean" else [])
        finally:
            campaign.close()
    text = sink.text()
    assert "[stderr]" in text and "[traces]" in text and "[metrics]" in text and "[headers]" in text
    assert '"route":"pass1"' in text  # the access log is in what was searched
    echoed = [r for r in rows if r.case == "echo_key"]
    assert echoed and all(r.outcome.split()[0].split("+")[-1] in {"401", "error"} or "401" in r.outcome
                          for r in echoed), echoed
    if backend == "lean":
        critiques = [r for r in rows if r.case.startswith("checker")]
        assert [r.outcome for r in critiques] == ["200 verified=false"] * 2, critiques
        assert "[redacted]" in text  # the critiques did carry a secret, and it was taken out
    assert not any(r.outcome.startswith(("LEAK", "500")) for r in rows), rows
    assert found(text, SECRETS) == []


def test_the_search_finds_every_form():
    secret = SECRETS[0]
    for text in (f"x{secret}y", f"Authorization: Bearer {secret}",
                 base64.b64encode(f"user:{secret}".encode()).decode(),
                 base64.b64encode(f"Bearer {secret}".encode()).decode(),
                 base64.urlsafe_b64encode(f"ab{secret}cd".encode()).decode()):
        assert found(text, [secret]) == [secret], text
    assert found("nothing here", SECRETS) == []
