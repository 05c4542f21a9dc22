//! People signed in with an identity provider: a node takes the provider's
//! bearer JWTs (verified against its key set, which the test's loopback
//! provider serves and rotates) and refuses expired, misaddressed,
//! unsigned and tampered ones.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

#[path = "../../src/http/tests/oidc_support/mod.rs"]
mod oidc_support;

use oidc_support::{EcKey, Provider, b64_json, jwks, now};

use crate::support::{Backend, Started, TestDb, get_json, send, start_node};
use crate::tenants::{keyed, members};
use crate::value_models::{acme, create_model};

const AUDIENCE: &str = "valueverse";

fn claims(provider: &Provider, tenant: &str, roles: &[&str]) -> Value {
    let now = now();
    json!({
        "iss": provider.issuer(),
        "aud": AUDIENCE,
        "sub": "ana@acme",
        "tenant": tenant,
        "realm_access": { "roles": roles },
        "iat": now,
        "exp": now + 300,
    })
}

fn bearer(token: &str) -> reqwest::Client {
    crate::tenants::client_with(token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_tokens_sign_people_in_and_bad_ones_are_refused() {
    let first = EcKey::p256("key-1");
    let provider = Provider::start(jwks(&[&first])).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let settings: valueverse::http::oidc::OidcSettings = serde_json::from_value(json!({
        "issuer": provider.issuer(),
        "audience": AUDIENCE,
        "jwks_url": provider.jwks_url(),
        "role_claim": "realm_access.roles",
        "refresh_min_seconds": 0,
        "platform_role": "vv-operator",
    }))
    .unwrap();
    let Started { node, api, .. } = start_node(&db, |config| {
        keyed(config);
        config.oidc = Some(settings);
    })
    .await;
    let machines = members(&node.store, "acme").await;
    members(&node.store, "globex").await;

    // A person of acme, an editor: who they are, and their tenant's data.
    let ana = bearer(&first.sign(&claims(&provider, "acme", &["editor", "viewer"])));
    let me = get_json(&ana, &format!("{api}/me")).await;
    assert_eq!(me["via"], "oidc", "{me}");
    assert_eq!(me["subject"], "ana@acme");
    assert_eq!(
        (me["tenant"].as_str(), me["role"].as_str()),
        (Some("acme"), Some("editor"))
    );
    let model = create_model(&ana, &api, &acme()).await;
    let seen = get_json(&machines.viewer, &format!("{api}/value-models/{model}")).await;
    assert_eq!(
        seen["id"],
        model.as_str(),
        "acme's key sees what acme's person made"
    );
    let bob = bearer(&first.sign(&claims(&provider, "globex", &["admin"])));
    let (status, _) = send(bob.get(format!("{api}/value-models/{model}"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "globex's admin does not");

    // Refused with 401: expired, another audience, another issuer, no
    // signature, a changed payload, a symmetric signature.
    let mut expired = claims(&provider, "acme", &["admin"]);
    expired["exp"] = json!(now() - 3600);
    let mut elsewhere = claims(&provider, "acme", &["admin"]);
    elsewhere["aud"] = json!("another-service");
    let mut impostor = claims(&provider, "acme", &["admin"]);
    impostor["iss"] = json!("https://impostor.example.com");
    let unsigned = format!(
        "{}.{}.",
        b64_json(&json!({ "alg": "none", "typ": "JWT", "kid": "key-1" })),
        b64_json(&claims(&provider, "acme", &["admin"]))
    );
    let viewer_token = first.sign(&claims(&provider, "acme", &["viewer"]));
    let mut parts: Vec<String> = viewer_token.split('.').map(str::to_owned).collect();
    parts[1] = b64_json(&claims(&provider, "acme", &["platform"]));
    let tampered = parts.join(".");
    let symmetric = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("key-1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims(&provider, "acme", &["admin"]),
        &jsonwebtoken::EncodingKey::from_secret(&first.public_point),
    )
    .unwrap();
    for (what, token) in [
        ("expired", first.sign(&expired)),
        ("another audience", first.sign(&elsewhere)),
        ("another issuer", first.sign(&impostor)),
        ("alg none", unsigned),
        ("tampered", tampered),
        ("HS256 with the public key", symmetric),
        ("not a JWT", "eyJ.broken".to_owned()),
    ] {
        let response = bearer(&token)
            .get(format!("{api}/me"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }
    // Signed, but for a tenant that does not exist here, or with no role.
    for (what, token) in [
        (
            "unknown tenant",
            first.sign(&claims(&provider, "initech", &["admin"])),
        ),
        (
            "no role",
            first.sign(&claims(&provider, "acme", &["auditor"])),
        ),
    ] {
        let (status, body) = send(bearer(&token).get(format!("{api}/me"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
    }

    // The operator, by the provider's role configured for it: operations,
    // and no tenant's data.
    let operator = bearer(&first.sign(&claims(&provider, "acme", &["vv-operator"])));
    let me = get_json(&operator, &format!("{api}/me")).await;
    assert_eq!(me["role"], "platform", "{me}");
    let (status, _) = send(operator.get(format!("{api}/value-models/{model}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(operator.get(format!("{api}/actors"))).await;
    assert_eq!(status, StatusCode::OK);

    // A person's WebSocket closes when their sign-in ends.
    let mut short = claims(&provider, "acme", &["viewer"]);
    short["exp"] = json!(now() + 2);
    let token = first.sign(&short);
    let ws = format!(
        "{}/ws/dashboard?access_token={token}",
        api.replace("http://", "ws://").replace("/api/v1", "")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        while let Some(message) = socket.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) = message {
                return frame.reason.to_string();
            }
        }
        String::new()
    })
    .await
    .expect("the socket closes when the token expires");
    assert_eq!(closed, "the sign-in expired");

    // The provider rotates its key: tokens of the new key sign in (the
    // node fetches the set again), tokens of the old one no longer do.
    let second = EcKey::p256("key-2");
    provider.set_jwks(jwks(&[&second]));
    let rotated = bearer(&second.sign(&claims(&provider, "acme", &["viewer"])));
    let me = get_json(&rotated, &format!("{api}/me")).await;
    assert_eq!(me["role"], "viewer", "{me}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let old = first.sign(&claims(&provider, "acme", &["viewer"]));
    let (status, body) = send(bearer(&old).get(format!("{api}/me"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a retired key: {body}");
    node.stop().await.unwrap();
}
