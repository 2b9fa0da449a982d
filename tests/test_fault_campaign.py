"""A slice of `python -m bench.faults`, so the command cannot rot: a few faults through a real
proxy, each answered with the right status, counted as answered, no token served unpaid (served
<= max(told, charged)), and no configured secret in anything the proxy emitted."""

from __future__ import annotations

import pytest

from bench.faults import HEADERS, Campaign, main

FAULTS = ["none", "fail_rate=1@fail_status=503", "truncate_stream", "bad_usage=missing", "html_reply",
          "latency_ms=300"]


@pytest.fixture(scope="module")
def campaign():
    c = Campaign(FAULTS)
    yield c
    c.close()


def status_of(outcome: str) -> str:
    """The status a client saw: an error event inside a 200 stream counts as that error's status."""
    return outcome.split()[0].split("+")[0]


def test_faults_are_answered_counted_and_metered(campaign):
    rows = {(r.case, r.surface, r.stream): r for r in campaign.fault_rows()}
    assert len(rows) == len(FAULTS) * 4
    for row in rows.values():
        assert not row.outcome.startswith(("500", "LEAK", "CONNECTION")), row
        assert row.lost <= 0, row
        if "+error" not in row.outcome:
            assert row.counted == status_of(row.outcome), row
    assert rows[("none", "vote", False)].told > rows[("none", "passthrough", False)].told > 0
    assert rows[("fail_rate=1@fail_status=503", "vote", True)].outcome == "200+error upstream_error"
    assert rows[("fail_rate=1@fail_status=503", "vote", True)].counted == "502"
    assert rows[("truncate_stream", "passthrough", True)].outcome == "200+error upstream_truncated"
    cut = rows[("truncate_stream", "passthrough", True)]
    assert cut.flagged and cut.charged > cut.served  # output unknown: the reservation is charged
    assert rows[("bad_usage=missing", "vote", False)].told == rows[("bad_usage=missing", "vote", False)].served
    assert rows[("html_reply", "passthrough", False)].outcome == "502 upstream_protocol_error"


def test_bad_inputs_and_a_leaving_client(campaign):
    for row in campaign.bad_input_rows():
        assert row.outcome.startswith("400") and row.counted == "400" and row.served == 0, row
    for row in campaign.disconnect_rows():
        assert row.counted == "499" and row.flagged and row.charged > 0, row  # the reservation, kept


def test_the_command_prints_one_table(capsys):
    assert main(["--faults", "none", "--backends", "lean", "--load", "4", "--no-state"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == HEADERS
    assert "| load " in out and "200×4" in out and "rows with lost > 0: 0" in out and "secrets found: 0" in out
