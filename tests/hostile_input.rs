//! Hostile input never hurts: arbitrary client messages, query strings,
//! headers and rows against the protocol parser, the filters, the scopes and
//! the timestamp reader. No panic, and nothing grows with the input but the
//! answer. Bounded, so it runs in every CI.

use pgfeed::auth::Scope;
use pgfeed::filter::Filter;
use pgfeed::names::Names;
use pgfeed::protocol::{Action, Envelope, ServerMessage};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Messages shaped like a client's: a known or unknown verb under one of the
/// verb keys, arbitrary arguments, sometimes inside `data`.
fn client_message() -> impl Strategy<Value = String> {
    let verb = prop_oneof![
        Just("ping".to_string()),
        Just("subscribe".to_string()),
        Just("unsubscribe".to_string()),
        Just("snapshot".to_string()),
        Just("resume".to_string()),
        Just("refresh".to_string()),
        Just("auth".to_string()),
        ".{0,20}",
    ];
    let key = prop_oneof![Just("action"), Just("type"), Just("event")];
    let names = prop_oneof![
        Just("tables".to_string()),
        Just("types".to_string()),
        Just("event_types".to_string()),
        Just("where".to_string()),
        Just("table".to_string()),
        Just("after".to_string()),
        Just("token".to_string()),
        Just("data".to_string()),
        ".{0,10}",
    ];
    (
        key,
        verb,
        prop::collection::btree_map(names, json_value(), 0..5),
        any::<bool>(),
    )
        .prop_map(|(key, verb, args, wrapped)| {
            let args: Map<String, Value> = args.into_iter().collect();
            let mut message = Map::new();
            message.insert(key.to_string(), Value::from(verb));
            if wrapped {
                message.insert("data".into(), Value::Object(args));
            } else {
                message.extend(args);
            }
            Value::Object(message).to_string()
        })
}

fn event(table: &str, new: Option<Value>, old: Option<Value>) -> pgfeed::feed::event::Event {
    pgfeed::feed::event::Event {
        seq: 1,
        kind: format!("{table}_updated").into(),
        table: table.into(),
        rows: std::sync::Arc::new((new, old)),
        audience: pgfeed::feed::pearl::Audience::All,
        opens_tx: true,
        closes_tx: true,
        frame: "{}".into(),
        envelope_frame: Default::default(),
        sse_frame: Default::default(),
        position: "1.00000001".into(),
        schema: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in ".{0,300}") {
        let _ = Action::parse(&text);
    }

    #[test]
    fn arbitrary_bytes_as_text_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Action::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn client_shaped_messages_parse_or_say_why(message in client_message()) {
        match Action::parse(&message) {
            Ok(Action::Subscribe(subscription)) => {
                // A subscription becomes a filter that can judge any event.
                let filter = Filter::from(subscription);
                let _ = event("studies", Some(json!({"id": 1})), None).wanted_by(&filter);
            }
            Ok(_) => {}
            Err(reason) => {
                prop_assert!(!reason.is_empty());
                // The answer is bounded: it never echoes an unbounded part of the input.
                prop_assert!(reason.len() <= 304, "{}", reason);
            }
        }
    }

    #[test]
    fn filters_and_scopes_judge_any_rows(
        where_ in prop::collection::btree_map(".{0,6}", json_value(), 0..4),
        tables in prop::option::of(prop::collection::hash_set(".{0,8}", 0..4)),
        new in prop::option::of(json_value()),
        old in prop::option::of(json_value()),
        drop_types in prop::collection::hash_set(".{0,8}", 0..4),
    ) {
        let where_: Map<String, Value> = where_.into_iter().collect();
        let tables: Option<Names> = tables.map(|t| t.into_iter().collect());
        let drop_types: Names = drop_types.into_iter().collect();
        let mut filter = Filter {
            tables: tables.clone(),
            types: None,
            where_: Some(where_.clone()),
            except_types: Default::default(),
        };
        filter.drop_types(&drop_types);
        let e = event("t", new.clone(), old.clone());
        let _ = e.wanted_by(&filter);
        let scope = Scope { tables, where_, write: false };
        let _ = e.in_scope(&scope);
        let _ = scope.allows_change("t", new.as_ref(), old.as_ref());
    }

    #[test]
    fn workspace_query_values_and_narrowing(text in ".{0,100}", claim in json_value()) {
        let ids = pgfeed::http::access::workspace_ids(&text);
        prop_assert!(ids.len() <= text.len() + 1);
        let mut scope = Scope::unbounded();
        scope.where_.insert("workspace_id".into(), claim);
        scope.narrow("workspace_id", ids);
        let _ = scope.allows_row(&json!({"workspace_id": 1}));
    }

    #[test]
    fn timestamps_read_only_timestamps(text in ".{0,40}", digits in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?([+-][0-9]{2}(:[0-9]{2}){0,2})?") {
        let _ = pgfeed::timestamps::to_utc_millis(&text);
        if let Some(utc) = pgfeed::timestamps::to_utc_millis(&digits) {
            prop_assert_eq!(utc.len(), 24);
            prop_assert!(utc.ends_with('Z'));
        }
    }

    #[test]
    fn server_messages_encode_in_both_envelopes(code in ".{0,20}", message in ".{0,200}") {
        for envelope in [Envelope::Type, Envelope::Event] {
            let text = ServerMessage::error(&code, &message).encode(envelope);
            prop_assert!(serde_json::from_str::<Value>(&text).is_ok());
        }
    }
}
