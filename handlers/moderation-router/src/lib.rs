//! Acts on content-moderation results published to an Event Grid topic:
//! `Contoso.Moderation.ContentFlagged` quarantines the content,
//! `Contoso.Moderation.ContentApproved` publishes it. Which of the two a
//! deployment of this handler sees is decided by its subscription filter in
//! gridfn.toml, so one component serves both routes.
//!
//! A result that is not a moderation result can never succeed: it is
//! rejected (dead-lettered), not retried.

use gridfn_sdk::{Delivery, Event, Outcome, export_handler, log};

pub const FLAGGED: &str = "Contoso.Moderation.ContentFlagged";
pub const APPROVED: &str = "Contoso.Moderation.ContentApproved";

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModerationResult {
    content_id: String,
    #[serde(default)]
    categories: Vec<String>,
    confidence: f64,
}

fn handle(event: &Event, delivery: &Delivery) -> Outcome {
    let result = match event.data_json::<ModerationResult>() {
        Ok(result) => result,
        Err(err) => return Outcome::reject(format!("not a moderation result: {err}")),
    };
    match event.event_type() {
        FLAGGED => log::warn(&format!(
            "{}: quarantine {} ({}; confidence {:.2})",
            delivery.handler(),
            result.content_id,
            result.categories.join(", "),
            result.confidence
        )),
        APPROVED => log::info(&format!("{}: publish {}", delivery.handler(), result.content_id)),
        other => return Outcome::reject(format!("unexpected event type {other}")),
    }
    Outcome::Success
}

export_handler!(handle);
