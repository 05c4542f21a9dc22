//! The OpenAPI document covers every route the node serves, and every
//! schema it refers to is defined.

use serde_json::Value;
use valueverse::Node;

use crate::support::{Backend, TestDb, test_config};

fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => found.push(target),
                    _ => refs(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_in_the_openapi_document() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = test_config(&db);
    config.dev = false;
    let node = Node::start(&config, |_| {}).await.unwrap();
    let client = reqwest::Client::new();
    // Open to all, like the probes.
    let response = client
        .get(format!("http://{}/api-docs/openapi.json", node.http_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert!(valueverse::http::ROUTES.len() >= 38);
    for (method, path) in valueverse::http::ROUTES {
        let operation = &document["paths"][path][method];
        assert!(
            operation.is_object(),
            "{method} {path} is not in the document"
        );
        assert!(
            operation["responses"].is_object(),
            "{method} {path} has no responses"
        );
        // What the checks in front of every handler answer is declared on
        // each operation they guard (schemathesis found them undeclared).
        if operation["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            for status in ["400", "401", "403", "408", "413", "429", "503"] {
                assert!(
                    operation["responses"][status].is_object(),
                    "{method} {path} does not declare {status}"
                );
            }
        }
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            if parameter["name"] == "limit" {
                assert_eq!(parameter["schema"]["minimum"], 1, "{method} {path}");
                assert_eq!(parameter["schema"]["maximum"], 100, "{method} {path}");
            }
        }
    }
    let schemas = &document["components"]["schemas"];
    for name in [
        "ValueModel",
        "Distribution",
        "SimulationResult",
        "JobView",
        "Commitment",
        "PlanView",
        "Insights",
        "ErrorDoc",
    ] {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    let mut targets = Vec::new();
    refs(&document, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or(target);
        assert!(schemas[name].is_object(), "dangling reference {target}");
    }
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    drop(client);
    node.stop().await.unwrap();
}
