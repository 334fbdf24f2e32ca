//! `gridfn explain`: for each event of a file and each handler, whether the
//! handler's filter lets it through, and if not, the first condition that
//! failed with the event's actual value. The answer to "why didn't my
//! handler fire?".

use serde::Serialize;
use serde_json::Value;

use crate::event::Schema;
use crate::filter::{Filter, Verdict};

/// The routing decisions for one event.
#[derive(Debug, Serialize)]
pub struct EventRouting {
    pub event_index: usize,
    pub id: Option<String>,
    pub event_type: Option<String>,
    pub schema: Schema,
    pub handlers: Vec<HandlerRouting>,
}

#[derive(Debug, Serialize)]
pub struct HandlerRouting {
    pub handler: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Parts of the handler's filter that Event Grid ignores (operands its
    /// operator does not read), so a surprising decision can be traced to them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Reads events from a file's text: one event or an array, Event Grid schema
/// or CloudEvents (recognised by `specversion`).
pub fn parse_events(text: &str) -> Result<Vec<(Value, Schema)>, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let events = match json {
        Value::Array(events) => events,
        one => vec![one],
    };
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| match &event {
            Value::Object(map) => {
                let schema = if map.contains_key("specversion") { Schema::CloudEvents } else { Schema::EventGrid };
                Ok((event, schema))
            }
            _ => Err(format!("event {index} is not a JSON object")),
        })
        .collect()
}

/// Evaluates every handler's filter against every event.
pub fn explain(routes: &[(String, Option<Filter>)], events: &[(Value, Schema)]) -> Vec<EventRouting> {
    let notes: Vec<Vec<String>> = routes
        .iter()
        .map(|(_, filter)| filter.iter().flat_map(Filter::warnings).map(|w| format!("filter.{w}")).collect())
        .collect();
    events
        .iter()
        .enumerate()
        .map(|(event_index, (event, schema))| {
            let attribute = |eg: &str, ce: &str| {
                let name = if *schema == Schema::CloudEvents { ce } else { eg };
                event.get(name).and_then(Value::as_str).map(str::to_owned)
            };
            EventRouting {
                event_index,
                id: attribute("id", "id"),
                event_type: attribute("eventType", "type"),
                schema: *schema,
                handlers: routes
                    .iter()
                    .zip(&notes)
                    .map(|((handler, filter), notes)| HandlerRouting {
                        handler: handler.clone(),
                        verdict: filter.as_ref().map_or(Verdict::Match, |f| f.evaluate(event, *schema)),
                        notes: notes.clone(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The human-readable report.
pub fn render_text(routings: &[EventRouting]) -> String {
    let width = routings.iter().flat_map(|r| &r.handlers).map(|h| h.handler.len()).max().unwrap_or(0);
    let mut out = String::new();
    for routing in routings {
        out.push_str(&format!(
            "event {} (id {}, type {}):\n",
            routing.event_index,
            routing.id.as_deref().unwrap_or("?"),
            routing.event_type.as_deref().unwrap_or("?")
        ));
        for handler in &routing.handlers {
            let decision = match &handler.verdict {
                Verdict::Match => "match".to_owned(),
                Verdict::Miss { condition, detail } => format!("miss   {condition}: {detail}"),
            };
            out.push_str(&format!("  {:width$}  {decision}\n", handler.handler));
            for note in &handler.notes {
                out.push_str(&format!("  {:width$}  note   {note}\n", ""));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_ignored_operand_is_shown_beside_the_decision() {
        let filter: Filter = serde_json::from_value(json!({
            "advancedFilters": [{"operatorType": "IsNotNull", "key": "data.k", "value": "x"}]
        }))
        .unwrap_or_else(|error| panic!("{error}"));
        let routes = [("with-note".to_owned(), Some(filter)), ("plain".to_owned(), None)];
        let events = parse_events(r#"{"id": "e1", "eventType": "T", "subject": "s", "data": {"k": null}}"#)
            .unwrap_or_else(|error| panic!("{error}"));

        let routings = explain(&routes, &events);
        assert_eq!(
            render_text(&routings),
            "event 0 (id e1, type T):\n  \
             with-note  miss   advancedFilters[0] IsNotNull data.k: data.k is null\n             \
             note   filter.advancedFilters[0].value: ignored: IsNotNull does not read `value`\n  \
             plain      match\n"
        );
        let json = serde_json::to_value(&routings).unwrap_or_default();
        assert_eq!(
            json[0]["handlers"][0]["notes"],
            json!(["filter.advancedFilters[0].value: ignored: IsNotNull does not read `value`"])
        );
        assert_eq!(json[0]["handlers"][1].get("notes"), None, "no notes, no field");
    }
}
