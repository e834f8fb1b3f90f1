use super::*;
use crate::plugin::Answer;
use crate::plugin::{MAX_REJECT_BODY, check};
use http::HeaderName;

#[test]
fn attributes_are_extracted() {
    let req = Request::builder()
        .uri("/graphs/a?x=1")
        .header("host", "api.local:80")
        .header("x-priority", "high")
        .header("cookie", "a=1; thread=t-42")
        .body(())
        .unwrap();
    let get = |i: Interest| match attribute(&i, &req, None) {
        wit::AttributeValue::Value(v) => Some(v),
        wit::AttributeValue::Absent => None,
        wit::AttributeValue::NotSeen => Some("(not seen)".into()),
    };
    assert_eq!(
        get(Interest::Header(HeaderName::from_static("x-priority"))).as_deref(),
        Some("high")
    );
    assert_eq!(
        get(Interest::Header(HeaderName::from_static("x-none"))),
        None
    );
    assert_eq!(get(Interest::Path).as_deref(), Some("/graphs/a"));
    assert_eq!(get(Interest::Query).as_deref(), Some("x=1"));
    assert_eq!(get(Interest::Host).as_deref(), Some("api.local"));
    assert_eq!(
        get(Interest::Cookie("thread".into())).as_deref(),
        Some("t-42")
    );
    assert_eq!(get(Interest::BodySize).as_deref(), Some("(not seen)"));
}

#[test]
fn body_attributes_tell_a_cut_body_from_a_missing_field() {
    use wit::AttributeValue::{Absent, NotSeen, Value};
    let req = Request::builder()
        .header("content-length", "40")
        .body(())
        .unwrap();
    let model = Interest::JsonBody("model".into());
    let cut = BodyView {
        prefix: br#"{"messages":[],"model":"a""#,
        whole: false,
    };
    assert_eq!(attribute(&model, &req, Some(cut)), NotSeen);
    let whole = BodyView {
        prefix: br#"{"messages":[]}"#,
        whole: true,
    };
    assert_eq!(attribute(&model, &req, Some(whole)), Absent);
    // A truncated body read whole is malformed, not unseen.
    let broken = BodyView { whole: true, ..cut };
    assert_eq!(attribute(&model, &req, Some(broken)), Absent);
    assert_eq!(
        attribute(&Interest::BodySize, &req, Some(cut)),
        Value("40".into())
    );
    let chunked = Request::builder().body(()).unwrap();
    assert_eq!(
        attribute(&Interest::BodySize, &chunked, Some(whole)),
        Value("15".into())
    );
    assert_eq!(attribute(&Interest::BodySize, &chunked, Some(cut)), NotSeen);
}

#[test]
fn decisions_outside_the_pool_are_refused() {
    let bad = wit::Decision::Forward(wit::Forward {
        candidates: vec![0, 7],
        add_headers: vec![],
        hedge_after_us: None,
    });
    assert!(matches!(
        check(Answer::Full(bad), 2),
        Err(CallFailure::Invalid(_))
    ));
    assert!(matches!(
        check(Answer::Few([1, 2, 0, 0], 2, None), 2),
        Err(CallFailure::Invalid(_))
    ));
    assert!(matches!(
        check(Answer::Few([1, 0, 9, 9], 2, None), 2),
        Ok(Choice::Forward { .. })
    ));
    let header = |name: &str, value: &str| wit::Header {
        name: name.into(),
        value: value.into(),
    };
    let forward = |headers: Vec<wit::Header>| {
        Answer::Full(wit::Decision::Forward(wit::Forward {
            candidates: vec![0],
            add_headers: headers,
            hedge_after_us: None,
        }))
    };
    for forbidden in [
        "content-length",
        "Transfer-Encoding",
        "host",
        "x-switchyard-client",
        "connection",
    ] {
        assert!(
            matches!(
                check(forward(vec![header(forbidden, "1")]), 2),
                Err(CallFailure::Invalid(_))
            ),
            "{forbidden}"
        );
    }
    assert!(matches!(
        check(forward(vec![header("x-tier", "fast")]), 2),
        Ok(Choice::Forward { .. })
    ));
    let many = (0..33).map(|i| header(&format!("x-h{i}"), "v")).collect();
    assert!(matches!(
        check(forward(many), 2),
        Err(CallFailure::Invalid(_))
    ));
    let huge = vec![header("x-big", &"v".repeat(20_000))];
    assert!(matches!(
        check(forward(huge), 2),
        Err(CallFailure::Invalid(_))
    ));
    assert!(matches!(
        check(Answer::Few([0; 4], 0, None), 2),
        Err(CallFailure::Invalid(_))
    ));
    let none = wit::Decision::Forward(wit::Forward {
        candidates: vec![],
        add_headers: vec![],
        hedge_after_us: None,
    });
    assert!(matches!(
        check(Answer::Full(none), 2),
        Err(CallFailure::Invalid(_))
    ));
    let big = wit::Decision::Reject(wit::Reject {
        status: 400,
        body: "x".repeat(MAX_REJECT_BODY + 1),
    });
    assert!(matches!(
        check(Answer::Full(big), 2),
        Err(CallFailure::Invalid(_))
    ));
    let odd = wit::Decision::Reject(wit::Reject {
        status: 42,
        body: String::new(),
    });
    assert!(matches!(
        check(Answer::Full(odd), 2),
        Err(CallFailure::Invalid(_))
    ));
}

#[test]
fn addresses_become_numbers() {
    assert_eq!(
        ip("10.0.0.1".parse().unwrap()),
        wit::IpAddress::V4(0x0a00_0001)
    );
    assert_eq!(
        ip("::ffff:10.0.0.1".parse().unwrap()),
        wit::IpAddress::V4(0x0a00_0001)
    );
    assert_eq!(ip("::1".parse().unwrap()), wit::IpAddress::V6((0, 1)));
}
