//! The store on SQLite and PostgreSQL: migrations, readiness, versioned writes.

use valueverse::store::{Column, Record};
use valueverse::{Store, StoreError};

use crate::support::{BACKENDS, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_version_checked_on_both_backends() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        assert_eq!(store.load_state::<Vec<u32>>("k", "a").await.unwrap(), None);
        assert_eq!(store.save_state("k", "a", &vec![1], 0).await.unwrap(), 1);
        // A second "first write" is stale.
        let stale = store.save_state("k", "a", &vec![2], 0).await.unwrap_err();
        assert!(
            matches!(
                stale,
                StoreError::VersionConflict {
                    expected: 0,
                    actual: Some(1),
                    ..
                }
            ),
            "{backend:?}: {stale}"
        );
        assert_eq!(store.save_state("k", "a", &vec![3], 1).await.unwrap(), 2);
        let stale = store.save_state("k", "a", &vec![4], 1).await.unwrap_err();
        assert!(matches!(
            stale,
            StoreError::VersionConflict {
                expected: 1,
                actual: Some(2),
                ..
            }
        ));
        let loaded = store
            .load_state::<Vec<u32>>("k", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((loaded.version, loaded.state), (2, vec![3]), "{backend:?}");
        // Other keys and kinds are separate rows.
        assert_eq!(store.save_state("k", "b", &vec![9], 0).await.unwrap(), 1);
        assert_eq!(
            store.save_state("other", "a", &vec![9], 0).await.unwrap(),
            1
        );
        store.close().await;
    }
}

fn saga_row<'a>(id: &'a str, body: &str) -> Record<'a> {
    Record {
        table: "sagas",
        id,
        columns: vec![
            ("status", Column::Text(Some("running".into()))),
            ("definition", Column::Text(Some("test".into()))),
            ("next_action_at_ms", Column::Int(None)),
            ("created_at_ms", Column::Int(Some(1))),
        ],
        body: body.to_owned(),
        events: Vec::new(),
    }
}

/// Concurrent row writes share transactions (group commit); each still
/// gets its own outcome, and a stale one fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_row_writes_each_get_their_own_outcome() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let write = |id: String, body: &'static str, expected: i64| {
            let store = store.clone();
            tokio::spawn(async move { store.save_record(&saga_row(&id, body), expected).await })
        };
        let firsts: Vec<_> = (0..200).map(|n| write(format!("s{n}"), "one", 0)).collect();
        for first in firsts {
            assert_eq!(first.await.unwrap().unwrap(), 1, "{backend:?}");
        }
        // Even rows are written at their version, odd ones from a stale read.
        let seconds: Vec<_> = (0..200)
            .map(|n| write(format!("s{n}"), "two", if n % 2 == 0 { 1 } else { 0 }))
            .collect();
        for (n, second) in seconds.into_iter().enumerate() {
            match (n % 2, second.await.unwrap()) {
                (0, Ok(version)) => assert_eq!(version, 2),
                (1, Err(StoreError::VersionConflict { actual, .. })) => {
                    assert_eq!(actual, Some(1))
                }
                (_, other) => panic!("{backend:?}: row {n}: {other:?}"),
            }
        }
        let loads: Vec<_> = (0..200)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move { store.load_record("sagas", &format!("s{n}")).await })
            })
            .collect();
        for (n, load) in loads.into_iter().enumerate() {
            let expected = if n % 2 == 0 { (2, "two") } else { (1, "one") };
            let (version, body) = load.await.unwrap().unwrap().unwrap();
            assert_eq!((version, body.as_str()), expected, "{backend:?}: row {n}");
        }
        assert_eq!(store.load_record("sagas", "absent").await.unwrap(), None);
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_migrated() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let store = Store::connect(&db.url, 2).await.unwrap();
        let not_ready = store.check_ready().await.unwrap_err();
        assert!(!not_ready.is_empty());
        let count = store.migrate().await.unwrap();
        assert!(count >= 1);
        store.check_ready().await.unwrap();
        // Migrating again is a no-op.
        store.migrate().await.unwrap();
        store.close().await;
    }
}

#[tokio::test]
async fn bad_urls_are_refused_clearly() {
    let error = Store::connect("mysql://root@localhost/x", 1)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("unsupported database url"),
        "{error}"
    );
    let error = Store::connect("mysql://root:hunter2@localhost/x", 1)
        .await
        .unwrap_err();
    assert!(
        !error.to_string().contains("hunter2"),
        "passwords never shown: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_postgres_database_is_created() {
    // TestDb names a fresh database and drops it at the end; here the store
    // creates it instead of the harness.
    let db = TestDb::new(crate::support::Backend::Postgres).await;
    let missing = format!("{}_new", db.url);
    let store = Store::open(&missing, 2)
        .await
        .expect("created and migrated");
    store.check_ready().await.unwrap();
    store.close().await;
    let name = missing.rsplit('/').next().unwrap().to_owned();
    crate::support::drop_postgres_database(&name).await;
}
