import json

import pytest
from moderation_router import APPROVED, ESCALATED, FLAGGED, handle

from gridfn import Delivery, Reject, Retry, Success, testing

FLAGGED_IMAGE = {"contentId": "img-4821", "confidence": 0.97, "category": "violence", "severity": "high"}
ESCALATED_TEXT = {
    "contentId": "doc-3301",
    "confidence": 0.52,
    "category": "self-harm",
    "severity": "high",
    "escalationReason": "Low confidence requires human review",
}


def run(host, event_type, data, subject="/content/x"):
    event = testing.event(event_type, data, subject=subject)
    return host.run(handle, event, Delivery(handler="mod"))


def test_each_type_takes_its_action_logs_it_and_counts_it():
    host = testing.Host(kv=True)
    assert run(host, FLAGGED, FLAGGED_IMAGE) == Success()
    assert run(host, APPROVED, {"contentId": "doc-1137", "confidence": 0.99}) == Success()
    assert run(host, ESCALATED, ESCALATED_TEXT) == Success()
    assert [(line.level, line.message) for line in host.logs] == [
        ("warn", "mod: quarantine img-4821 (violence, high; confidence 0.97)"),
        ("info", "mod: publish doc-1137"),
        ("warn", "mod: escalate doc-3301 for human review (Low confidence requires human review)"),
    ]
    assert host.kv_data == {"count/quarantine": b"1", "count/publish": b"1", "count/escalate": b"1"}


def test_category_and_severity_default_to_unknown_and_confidence_shows_two_places():
    host = testing.Host()
    assert run(host, FLAGGED, {"contentId": "c", "confidence": 1}) == Success()
    assert host.messages() == ["mod: quarantine c (unknown, unknown; confidence 1.00)"]


def test_config_action_overrides_the_type_and_an_escalation_is_published_onward():
    host = testing.Host(config={"action": "escalate"}, publish=True)
    assert run(host, FLAGGED, FLAGGED_IMAGE, subject="/content/images/img-4821") == Success()
    assert host.messages() == ["mod: escalate img-4821 for human review (confidence 0.97, severity high)"]
    [escalation] = host.published
    assert (escalation.type, escalation.source, escalation.subject) == (
        ESCALATED,
        "/gridfn/moderation",
        "/content/images/img-4821",
    )
    assert json.loads(escalation.data) == {**FLAGGED_IMAGE, "escalationReason": "confidence 0.97, severity high"}


def test_an_incoming_escalation_is_not_published_again():
    host = testing.Host(publish=True)
    assert run(host, ESCALATED, ESCALATED_TEXT) == Success()
    assert host.published == []


def test_without_kv_or_publish_it_still_succeeds():
    host = testing.Host(config={"action": "escalate"})
    assert run(host, FLAGGED, FLAGGED_IMAGE) == Success()
    assert host.published == [] and host.kv_data == {}


def test_a_failing_store_is_retried_and_nothing_is_published():
    host = testing.Host(kv=True, kv_failure="redis is down", publish=True, config={"action": "escalate"})
    assert run(host, FLAGGED, FLAGGED_IMAGE) == Retry("counting failed: redis is down")
    assert host.published == [] and host.logs == []


@pytest.mark.parametrize(
    "event_type, data, reason",
    [
        (FLAGGED, b"not json", "not a moderation result: data is not JSON: "),
        (FLAGGED, [1], "not a moderation result: data is not a JSON object"),
        (FLAGGED, {"confidence": 0.5}, "not a moderation result: contentId is missing"),
        (FLAGGED, {"contentId": 7, "confidence": 0.5}, "not a moderation result: contentId is not a string"),
        (FLAGGED, {"contentId": "c"}, "not a moderation result: confidence is missing"),
        (FLAGGED, {"contentId": "c", "confidence": "high"}, "not a moderation result: confidence is not a number"),
        (FLAGGED, {"contentId": "c", "confidence": True}, "not a moderation result: confidence is not a number"),
        ("com.contoso.ai.Other", {"contentId": "c", "confidence": 0.5}, "unexpected event type com.contoso.ai.Other"),
    ],
)
def test_what_can_never_succeed_is_rejected(event_type, data, reason):
    host = testing.Host(kv=True)
    outcome = run(host, event_type, data)
    assert isinstance(outcome, Reject) and outcome.reason.startswith(reason), outcome
    assert host.kv_data == {} and host.logs == []


def test_an_unknown_configured_action_is_rejected():
    host = testing.Host(config={"action": "shred"})
    assert run(host, FLAGGED, FLAGGED_IMAGE) == Reject("unknown action shred")
