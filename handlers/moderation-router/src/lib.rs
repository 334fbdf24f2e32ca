//! Acts on content-moderation results, as the classic Event Grid lab's
//! content-moderation service publishes them (`moderation_events.json`):
//! CloudEvents from `/services/content-moderation` whose data carries
//! `contentId`, `confidence`, `category`, `severity` and, on a
//! `ReviewEscalated`, `escalationReason`.
//!
//! One component serves every route: each deployment's subscription filter in
//! gridfn.toml picks the events, and the action is the config key `action`
//! (`quarantine`, `publish` or `escalate`) when the manifest sets it, else the
//! one the event type names. That is what lets an advanced filter ("confident
//! and severe") escalate a `ContentFlagged` event.
//!
//! The same behaviour is written in Python and JavaScript from one contract,
//! and the same end-to-end tests run against all three; the log lines are
//! part of that contract, so change them in all three or not at all.
//!
//! A result that is not a moderation result, an event type it does not know
//! and an unknown `action` can never succeed: they are rejected
//! (dead-lettered), not retried.

use gridfn_sdk::{Delivery, Event, Outcome, config, export_handler, kv, log, publish};
use serde_json::{Map, Value};

pub const FLAGGED: &str = "com.contoso.ai.ContentFlagged";
pub const APPROVED: &str = "com.contoso.ai.ContentApproved";
pub const ESCALATED: &str = "com.contoso.ai.ReviewEscalated";
/// The source of the `ReviewEscalated` events this handler publishes.
pub const SOURCE: &str = "/gridfn/moderation";

/// What to do with the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Quarantine,
    Publish,
    Escalate,
}

impl Action {
    fn parse(name: &str) -> Option<Action> {
        match name {
            "quarantine" => Some(Action::Quarantine),
            "publish" => Some(Action::Publish),
            "escalate" => Some(Action::Escalate),
            _ => None,
        }
    }

    fn of_type(event_type: &str) -> Option<Action> {
        match event_type {
            FLAGGED => Some(Action::Quarantine),
            APPROVED => Some(Action::Publish),
            ESCALATED => Some(Action::Escalate),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Action::Quarantine => "quarantine",
            Action::Publish => "publish",
            Action::Escalate => "escalate",
        }
    }
}

/// The fields of a moderation result this handler reads; `data` keeps the
/// whole object, as an escalation republishes it.
struct ModerationResult {
    content_id: String,
    confidence: f64,
    category: String,
    severity: String,
    escalation_reason: Option<String>,
    data: Map<String, Value>,
}

impl ModerationResult {
    fn parse(bytes: &[u8]) -> Result<ModerationResult, String> {
        let data = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(data)) => data,
            Ok(_) => return Err("data is not a JSON object".to_owned()),
            Err(err) => return Err(format!("data is not JSON: {err}")),
        };
        let content_id = match data.get("contentId") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err("contentId is not a string".to_owned()),
            None => return Err("contentId is missing".to_owned()),
        };
        let confidence = match data.get("confidence") {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(_) => return Err("confidence is not a number".to_owned()),
            None => return Err("confidence is missing".to_owned()),
        };
        let text = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
        Ok(ModerationResult {
            content_id,
            confidence,
            category: text("category").unwrap_or_else(|| "unknown".to_owned()),
            severity: text("severity").unwrap_or_else(|| "unknown".to_owned()),
            escalation_reason: text("escalationReason"),
            data,
        })
    }

    /// Why a person should look at it: the sender's reason when it gave one.
    fn escalation_reason(&self) -> String {
        self.escalation_reason
            .clone()
            .unwrap_or_else(|| format!("confidence {:.2}, severity {}", self.confidence, self.severity))
    }
}

fn handle(event: &Event, delivery: &Delivery) -> Outcome {
    let result = match ModerationResult::parse(event.data()) {
        Ok(result) => result,
        Err(why) => return Outcome::reject(format!("not a moderation result: {why}")),
    };
    let action = match config::get("action") {
        Some(name) => match Action::parse(&name) {
            Some(action) => action,
            None => return Outcome::reject(format!("unknown action {name}")),
        },
        None => match Action::of_type(event.event_type()) {
            Some(action) => action,
            None => return Outcome::reject(format!("unexpected event type {}", event.event_type())),
        },
    };

    // Queued before counting, so a publish failure retries before the count moves.
    if action == Action::Escalate && event.event_type() != ESCALATED {
        if let Err(err) = publish_escalation(event, &result) {
            return Outcome::retry(format!("cannot publish the escalation: {err}"));
        }
    }
    match kv::increment(&format!("count/{}", action.name()), 1) {
        Ok(_) | Err(kv::Error::Denied) => {}
        Err(err) => return Outcome::retry(format!("counting failed: {err}")),
    }

    let handler = delivery.handler();
    let content = &result.content_id;
    match action {
        Action::Quarantine => log::warn(&format!(
            "{handler}: quarantine {content} ({}, {}; confidence {:.2})",
            result.category, result.severity, result.confidence
        )),
        Action::Publish => log::info(&format!("{handler}: publish {content}")),
        Action::Escalate => {
            log::warn(&format!("{handler}: escalate {content} for human review ({})", result.escalation_reason()))
        }
    }
    Outcome::Success
}

/// Queues a `ReviewEscalated` for the content; a handler without `publish`
/// just escalates in its log and counts.
fn publish_escalation(event: &Event, result: &ModerationResult) -> Result<(), publish::Error> {
    let mut data = result.data.clone();
    data.insert("escalationReason".to_owned(), Value::String(result.escalation_reason()));
    let mut escalation = publish::json(ESCALATED, &data).source(SOURCE);
    if let Some(subject) = event.subject() {
        escalation = escalation.subject(subject);
    }
    match escalation.send() {
        Ok(()) | Err(publish::Error::Denied) => Ok(()),
        Err(err) => Err(err),
    }
}

export_handler!(handle);
