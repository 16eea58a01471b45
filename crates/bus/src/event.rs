//! CloudEvents 1.0, JSON structured mode, with the `traceparent` extension
//! so that a trace continues from the request that caused an event into
//! every consumer of it.

use serde::{Deserialize, Serialize};

pub const SPEC_VERSION: &str = "1.0";
/// An event larger than this (serialised) is refused at publish.
pub const EVENT_BYTES_MAX: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    /// Unique per event; consumers de-duplicate on it.
    pub id: String,
    /// The producing service, e.g. `identity`.
    pub source: String,
    /// `<service>.<aggregate>.<past-tense verb>.v<N>`, e.g.
    /// `identity.user.registered.v1`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The aggregate's id; events of one subject are delivered in order.
    pub subject: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub datacontenttype: String,
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl CloudEvent {
    /// A new event with a fresh id, the current time and the current
    /// request's trace context.
    pub fn new(
        source: &str,
        event_type: &str,
        subject: &str,
        data: serde_json::Value,
        now_ms: u64,
    ) -> Self {
        Self {
            specversion: SPEC_VERSION.into(),
            id: uuid::Uuid::now_v7().to_string(),
            source: source.into(),
            event_type: event_type.into(),
            subject: subject.into(),
            time: rfc3339(now_ms),
            datacontenttype: "application/json".into(),
            data,
            traceparent: kit::telemetry::current_trace().map(|t| t.traceparent()),
        }
    }

    /// The trace id carried in `traceparent`, for logs.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref()?.split('-').nth(1)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event always serialises")
    }

    /// The JSON a broker stores, refused beyond [`EVENT_BYTES_MAX`].
    pub(crate) fn to_bounded_json(&self) -> Result<String, crate::BusError> {
        let body = self.to_json();
        if body.len() > EVENT_BYTES_MAX {
            return Err(crate::BusError::Invalid(format!(
                "event {} is {} bytes; the limit is {EVENT_BYTES_MAX}",
                self.id,
                body.len()
            )));
        }
        Ok(body)
    }
}

fn rfc3339(now_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_cloudevents_structured_json() {
        let event = CloudEvent::new(
            "identity",
            "identity.user.registered.v1",
            "01a2",
            serde_json::json!({"email": "ada@example.com"}),
            1_795_580_443_123,
        );
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "identity.user.registered.v1");
        assert_eq!(json["time"], "2026-11-25T04:20:43.123Z");
        assert!(
            json.get("traceparent").is_none(),
            "no trace outside a request"
        );
        assert_eq!(serde_json::from_value::<CloudEvent>(json).unwrap(), event);
    }
}
