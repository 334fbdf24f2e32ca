"""Acts on content-moderation results, as the classic Event Grid lab's
content-moderation service publishes them: CloudEvents from
`/services/content-moderation` whose data carries `contentId`, `confidence`,
`category`, `severity` and, on a `ReviewEscalated`, `escalationReason`.

The Python twin of handlers/moderation-router (Rust): one contract, and the
same end-to-end tests run against both, so change the log lines in both or
not at all. The action is the config key `action` when the manifest sets it,
else the one the event type names; each action is logged (the lines are
part of the contract), counted in kv, and an escalation is published onward
as a `ReviewEscalated`. Data that is not a moderation result, an unknown
type and an unknown action can never succeed: they are rejected
(dead-lettered), not retried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gridfn import Reject, Retry, Success, config, handler, kv, log, publish

FLAGGED = "com.contoso.ai.ContentFlagged"
APPROVED = "com.contoso.ai.ContentApproved"
ESCALATED = "com.contoso.ai.ReviewEscalated"
#: The source of the ReviewEscalated events this handler publishes.
SOURCE = "/gridfn/moderation"

ACTION_OF_TYPE = {FLAGGED: "quarantine", APPROVED: "publish", ESCALATED: "escalate"}
ACTIONS = frozenset(ACTION_OF_TYPE.values())


@dataclass(frozen=True)
class ModerationResult:
    """The fields this handler reads; `data` keeps the whole object, as an
    escalation republishes it."""

    content_id: str
    confidence: float
    category: str
    severity: str
    escalation_reason: str | None
    data: dict[str, Any]

    @staticmethod
    def parse(raw: bytes) -> ModerationResult:
        """Raises ValueError saying why `raw` is not a moderation result."""
        try:
            data = json.loads(raw)
        except ValueError as error:
            raise ValueError(f"data is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError("data is not a JSON object")
        content_id = data.get("contentId")
        if "contentId" not in data:
            raise ValueError("contentId is missing")
        if not isinstance(content_id, str):
            raise ValueError("contentId is not a string")
        confidence = data.get("confidence")
        if "confidence" not in data:
            raise ValueError("confidence is missing")
        # JSON true/false are not numbers, though Python's bool is an int.
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
            raise ValueError("confidence is not a number")

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        return ModerationResult(
            content_id=content_id,
            confidence=float(confidence),
            category=text("category") or "unknown",
            severity=text("severity") or "unknown",
            escalation_reason=text("escalationReason"),
            data=data,
        )

    def why_escalated(self) -> str:
        """Why a person should look at it: the sender's reason when it gave one."""
        if self.escalation_reason is not None:
            return self.escalation_reason
        return f"confidence {self.confidence:.2f}, severity {self.severity}"


@handler
def handle(event, delivery):
    try:
        result = ModerationResult.parse(event.data)
    except ValueError as why:
        return Reject(f"not a moderation result: {why}")
    action = config.get("action")
    if action is None:
        action = ACTION_OF_TYPE.get(event.type)
        if action is None:
            return Reject(f"unexpected event type {event.type}")
    elif action not in ACTIONS:
        return Reject(f"unknown action {action}")

    # Queued before counting, so a publish failure retries before the count
    # moves; an escalation of an escalation would loop through this router.
    if action == "escalate" and event.type != ESCALATED:
        data = {**result.data, "escalationReason": result.why_escalated()}
        try:
            publish.event(ESCALATED, data, source=SOURCE, subject=event.subject)
        except publish.Denied:
            pass  # without publish it escalates in its log only
        except publish.PublishError as error:
            return Retry(f"cannot publish the escalation: {error}")
    try:
        kv.increment(f"count/{action}")
    except kv.Denied:
        pass
    except kv.KvError as error:
        return Retry(f"counting failed: {error}")

    name, content = delivery.handler, result.content_id
    if action == "quarantine":
        log.warn(
            f"{name}: quarantine {content} ({result.category}, {result.severity}; confidence {result.confidence:.2f})"
        )
    elif action == "publish":
        log.info(f"{name}: publish {content}")
    else:
        log.warn(f"{name}: escalate {content} for human review ({result.why_escalated()})")
    return Success()
