use super::*;

fn ttl() -> Duration {
    Duration::from_secs(60)
}

#[test]
fn ids_are_random_hex_and_parse_back() {
    let a = JobId::new();
    let b = JobId::new();
    assert_ne!(a, b);
    assert_eq!(a.as_str().len(), 32);
    assert_eq!(JobId::parse(a.as_str()), Some(a.clone()));
    assert_eq!(JobId::parse(&a.as_str().to_uppercase()), Some(a));
    assert_eq!(JobId::parse("../etc/passwd"), None);
    assert_eq!(JobId::parse(""), None);
    assert_eq!(JobId::parse(&"g".repeat(32)), None);
}

#[test]
fn event_ids_order_as_redis_stream_ids() {
    let a = EventId::parse("1700000000000-9").expect("id");
    let b = EventId::parse("1700000000001-0").expect("id");
    assert!(a < b);
    assert_eq!(a.to_string(), "1700000000000-9");
    assert_eq!(EventId::parse("5"), Some(EventId { ms: 5, seq: 0 }));
    assert_eq!(EventId::parse("x-1"), None);
    assert_eq!(EventId::parse("1-"), None);
}

#[tokio::test]
async fn local_store_keeps_order_and_resumes_after_an_id() {
    let store = JobStore::memory();
    let id = JobId::new();
    let accepted = store.create(&id, "research", ttl()).await.expect("create");
    assert_eq!(
        store.route_of(&id).await.expect("route"),
        Some("research".into())
    );
    let mut ids = vec![accepted];
    for i in 0..5 {
        ids.push(
            store
                .append(&id, kind::PROGRESS, &format!("step {i}"), ttl())
                .await
                .expect("append"),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    let all = store.read(&id, None).await.expect("read");
    assert_eq!(all.len(), 6);
    let rest = store.read(&id, Some(ids[3])).await.expect("read");
    assert_eq!(
        rest.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["step 3", "step 4"]
    );
    // A subscriber from the middle gets the rest, then what comes.
    let mut sub = store.subscribe(&id, Some(ids[4]));
    store
        .append(&id, kind::RESULT, "done", ttl())
        .await
        .expect("append");
    let mut got = Vec::new();
    for _ in 0..2 {
        match sub.next().await {
            Some(Delivery::Event(e)) => got.push(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got[0].data, "step 4");
    assert!(got[1].is_terminal());
    assert_eq!(store.route_of(&JobId::new()).await.expect("route"), None);
}

#[tokio::test]
async fn oversized_data_is_refused() {
    let store = JobStore::memory();
    let big = "x".repeat(MAX_DATA + 1);
    let err = store
        .append(&JobId::new(), kind::RESULT, &big, ttl())
        .await
        .expect_err("too big");
    assert!(matches!(err, StoreError::Refused(_)), "{err}");
}
