//! Turning result rows into [`Row`]s and [`Group`]s, tolerant of every value a column can hold:
//! text that is not UTF-8 (a SQL_ASCII database) is decoded with replacement characters, a text
//! context that is not JSON is counted with no reason, and nothing here can fail on a value.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row as _;

use crate::events::{ContextKind, Group, Row, TimeClass};
use crate::time::UnixMicros;

/// A text column that may come as raw bytes (SQL_ASCII): (value, decoded lossily).
pub(super) fn text(r: &PgRow, i: usize, raw: bool) -> Result<(Option<String>, bool), sqlx::Error> {
    if !raw {
        return Ok((r.try_get(i)?, false));
    }
    Ok(match r.try_get::<Option<Vec<u8>>, _>(i)? {
        None => (None, false),
        Some(bytes) => match String::from_utf8(bytes) {
            Ok(s) => (Some(s), false),
            Err(e) => (Some(String::from_utf8_lossy(e.as_bytes()).into_owned()), true),
        },
    })
}

/// What a text context holds, as PostgreSQL's `->>` and `jsonb_typeof` would say for valid JSON.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ParsedContext {
    pub reason: Option<String>,
    pub reason_json_type: Option<String>,
    pub kind: Option<ContextKind>,
    pub booking_id: Option<String>,
    pub not_json: bool,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `->>`: a string as itself, JSON null as NULL, anything else as its JSON text (compact: a text
/// column's non-string reasons are labelled as serde_json writes them).
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Parses a text context column's value.
pub(super) fn parse_context(raw: Option<&str>) -> ParsedContext {
    let Some(raw) = raw else {
        return ParsedContext { kind: Some(ContextKind::Null), ..ParsedContext::default() };
    };
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => ParsedContext {
            reason: map.get("reason").and_then(as_text),
            reason_json_type: map.get("reason").map(|v| json_type(v).to_string()),
            kind: Some(ContextKind::Object),
            booking_id: map.get("booking_id").and_then(as_text),
            not_json: false,
        },
        Ok(_) => ParsedContext { kind: Some(ContextKind::NotObject), ..ParsedContext::default() },
        Err(_) => ParsedContext { kind: Some(ContextKind::NotObject), not_json: true, ..ParsedContext::default() },
    }
}

/// A row of `rows_since` / `rows_between`: id, event type, reason, reason type, context type,
/// booking id, raw context (text columns only), time class, microseconds.
pub(super) fn row(r: &PgRow, raw: bool) -> Result<Row, sqlx::Error> {
    let (id, lossy_id) = text(r, 0, raw)?;
    let (event_type, lossy_et) = text(r, 1, raw)?;
    let (raw_context, lossy_ctx) = text(r, 6, raw)?;
    let time = TimeClass::from_code(r.try_get(7)?);
    let created_us = r.try_get::<Option<i64>, _>(8)?.unwrap_or(0);
    let mut row = Row {
        id: id.unwrap_or_default(),
        event_type,
        reason: None,
        reason_json_type: None,
        context: ContextKind::Null,
        booking_id: None,
        created_us,
        time,
        lossy_text: lossy_id || lossy_et || lossy_ctx,
        context_not_json: false,
    };
    if let Some(raw_context) = raw_context {
        let p = parse_context(Some(&raw_context));
        row.reason = p.reason;
        row.reason_json_type = p.reason_json_type;
        row.context = p.kind.unwrap_or(ContextKind::Null);
        row.booking_id = p.booking_id;
        row.context_not_json = p.not_json;
        return Ok(row);
    }
    let (reason, lossy_reason) = text(r, 2, raw)?;
    let (booking_id, lossy_booking) = text(r, 5, raw)?;
    let context_type: Option<String> = r.try_get(4)?;
    row.reason = reason;
    row.reason_json_type = r.try_get(3)?;
    row.context = ContextKind::from_jsonb_typeof(context_type.as_deref());
    row.booking_id = booking_id;
    row.lossy_text |= lossy_reason || lossy_booking;
    Ok(row)
}

/// A group of the JSON load: event type, reason, reason type, context type, time class, minute
/// microseconds, rows, newest microseconds, folded.
pub(super) fn group(r: &PgRow, raw: bool) -> Result<Group, sqlx::Error> {
    let (event_type, lossy_et) = text(r, 0, raw)?;
    let (reason, lossy_reason) = text(r, 1, raw)?;
    Ok(Group {
        event_type,
        reason,
        reason_json_type: r.try_get(2)?,
        context: ContextKind::from_jsonb_typeof(r.try_get::<Option<String>, _>(3)?.as_deref()),
        time: TimeClass::from_code(r.try_get(4)?),
        minute: r.try_get::<Option<i64>, _>(5)?.map(|us| UnixMicros(us).minute()),
        count: r.try_get::<i64, _>(6)?.max(0) as u64,
        last_us: r.try_get(7)?,
        folded: r.try_get(8)?,
        lossy_text: lossy_et || lossy_reason,
        context_not_json: false,
        example_id: text(r, 9, raw)?.0,
    })
}

/// Sums the rows of a text context's load into groups as they stream, then keeps the top
/// `reason_cap` reasons of each event type by name and folds the rest, as the SQL load does.
#[derive(Default)]
pub(super) struct TextLoad {
    groups: HashMap<GroupKey, (u64, Option<i64>, Option<String>)>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    event_type: Option<String>,
    reason: Option<String>,
    reason_json_type: Option<String>,
    context: u8,
    time: TimeClass,
    minute: Option<i64>,
    lossy: bool,
    not_json: bool,
}

impl TextLoad {
    /// One streamed row: event type, raw context, time class, microseconds. `horizon`: minutes
    /// are kept from here on.
    pub(super) fn add(&mut self, r: &PgRow, raw: bool, horizon: UnixMicros) -> Result<(), sqlx::Error> {
        let (event_type, lossy_et) = text(r, 0, raw)?;
        let (context, lossy_ctx) = text(r, 1, raw)?;
        let time = TimeClass::from_code(r.try_get(2)?);
        let us: Option<i64> = r.try_get(3)?;
        let (id, _) = text(r, 4, raw)?;
        let p = parse_context(context.as_deref());
        let dated = time == TimeClass::Dated;
        let minute = us.filter(|u| dated && *u >= horizon.0).map(|u| UnixMicros(u).minute());
        let key = GroupKey {
            event_type,
            reason: p.reason.map(|s| s.chars().take(101).collect()),
            reason_json_type: p.reason_json_type,
            context: match p.kind {
                Some(ContextKind::Object) => 0,
                Some(ContextKind::NotObject) => 1,
                _ => 2,
            },
            time,
            minute,
            lossy: lossy_et || lossy_ctx,
            not_json: p.not_json,
        };
        let odd = key.not_json || key.lossy || key.context != 0 || !dated;
        let cell = self.groups.entry(key).or_insert((0, None, None));
        cell.0 += 1;
        if dated {
            cell.1 = cell.1.max(us);
        }
        if odd && cell.2.is_none() {
            cell.2 = id;
        }
        Ok(())
    }

    /// The groups, reasons past `reason_cap` per event type folded.
    pub(super) fn finish(self, reason_cap: usize) -> Vec<Group> {
        let mut totals: HashMap<(Option<String>, Option<String>), u64> = HashMap::new();
        for (k, (n, _, _)) in &self.groups {
            *totals.entry((k.event_type.clone(), k.reason.clone())).or_default() += n;
        }
        let mut ranked: Vec<_> = totals.into_iter().collect();
        ranked.sort_by(|a, b| a.0 .0.cmp(&b.0 .0).then(b.1.cmp(&a.1)).then_with(|| a.0 .1.cmp(&b.0 .1)));
        let mut kept = std::collections::HashSet::new();
        let mut rank = 0usize;
        let mut current: Option<Option<String>> = None;
        for ((et, reason), _) in ranked {
            if current.as_ref() != Some(&et) {
                current = Some(et.clone());
                rank = 0;
            }
            rank += 1;
            if rank <= reason_cap {
                kept.insert((et, reason));
            }
        }
        self.groups
            .into_iter()
            .map(|(k, (count, last_us, example_id))| {
                let folded = !kept.contains(&(k.event_type.clone(), k.reason.clone()));
                let reason = if folded && k.reason.as_deref() != Some("") { None } else { k.reason };
                Group {
                    event_type: k.event_type,
                    reason,
                    reason_json_type: k.reason_json_type,
                    context: match k.context {
                        0 => ContextKind::Object,
                        1 => ContextKind::NotObject,
                        _ => ContextKind::Null,
                    },
                    minute: k.minute,
                    time: k.time,
                    folded,
                    lossy_text: k.lossy,
                    context_not_json: k.not_json,
                    count,
                    last_us,
                    example_id,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_context_is_parsed_as_postgres_would_and_never_fails() {
        let p = parse_context(Some(r#"{"reason": "late", "booking_id": "b1"}"#));
        assert_eq!(
            (p.reason.as_deref(), p.booking_id.as_deref(), p.kind),
            (Some("late"), Some("b1"), Some(ContextKind::Object))
        );
        let p = parse_context(Some(r#"{"reason": 42}"#));
        assert_eq!((p.reason.as_deref(), p.reason_json_type.as_deref()), (Some("42"), Some("number")));
        let p = parse_context(Some(r#"{"reason": null}"#));
        assert_eq!((p.reason, p.reason_json_type.as_deref()), (None, Some("null")));
        let p = parse_context(Some("truncated {\"reason\": \"x"));
        assert!(p.not_json && p.reason.is_none());
        assert_eq!(parse_context(Some("[1]")).kind, Some(ContextKind::NotObject));
        assert_eq!(parse_context(None).kind, Some(ContextKind::Null));
    }
}
