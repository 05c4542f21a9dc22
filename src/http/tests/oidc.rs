//! The OIDC verifier against a loopback provider.

mod oidc_support;

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oidc_support::{EcKey, Provider, RsaKey, b64_json, jwks, now};
use serde_json::{Value, json};
use valueverse_http::oidc::{Identity, OidcError, OidcSettings, OidcVerifier};

const AUDIENCE: &str = "valueverse";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client")
}

fn settings(provider: &Provider, discovery: bool) -> OidcSettings {
    let mut value = json!({
        "issuer": provider.issuer(),
        "audience": AUDIENCE,
        "role_claim": "realm_access.roles",
    });
    if !discovery {
        value["jwks_url"] = json!(provider.jwks_url());
    }
    serde_json::from_value(value).expect("settings")
}

fn verifier(provider: &Provider) -> OidcVerifier {
    OidcVerifier::new(settings(provider, false), client()).expect("verifier")
}

fn claims(provider: &Provider) -> Value {
    let now = now();
    json!({
        "iss": provider.issuer(),
        "aud": ["account", AUDIENCE],
        "sub": "user-1",
        "tenant": "acme",
        "realm_access": { "roles": ["editor", "viewer", 7] },
        "iat": now,
        "exp": now + 300,
    })
}

async fn setup() -> (EcKey, Provider, OidcVerifier) {
    let key = EcKey::p256("key-1");
    let provider = Provider::start(jwks(&[&key])).await;
    let verifier = verifier(&provider);
    (key, provider, verifier)
}

fn assert_claim_error(result: Result<Identity, OidcError>, name: &str) {
    match result {
        Err(OidcError::Claim { claim, .. }) => assert_eq!(claim, name),
        other => panic!("expected a claim error naming {name}, got {other:?}"),
    }
}

#[tokio::test]
async fn good_token_verifies_and_keys_are_cached() {
    let (key, provider, verifier) = setup().await;
    let claims = claims(&provider);
    let identity = verifier.verify(&key.sign(&claims)).await.expect("verifies");
    assert_eq!(identity.subject, "user-1");
    assert_eq!(identity.tenant, "acme");
    assert_eq!(
        identity.roles,
        vec!["editor".to_owned(), "viewer".to_owned()]
    );
    assert_eq!(identity.issuer, provider.issuer());
    assert_eq!(Some(identity.expires_at), claims["exp"].as_u64());
    // A second token: no second fetch.
    verifier
        .clone()
        .verify(&key.sign(&claims))
        .await
        .expect("verifies again");
    assert_eq!(provider.jwks_hits(), 1);
    assert_eq!(provider.discovery_hits(), 0);
}

#[tokio::test]
async fn discovery_finds_the_jwks() {
    let key = EcKey::p256("key-1");
    let provider = Provider::start(jwks(&[&key])).await;
    let verifier = OidcVerifier::new(settings(&provider, true), client()).expect("verifier");
    let identity = verifier
        .verify(&key.sign(&claims(&provider)))
        .await
        .expect("verifies");
    assert_eq!(identity.subject, "user-1");
    assert_eq!(provider.discovery_hits(), 1);
    assert_eq!(provider.jwks_hits(), 1);
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    let key = EcKey::p256("key-1");
    let provider = Provider::start(jwks(&[&key])).await;
    provider.set_discovery(
        json!({ "issuer": "https://evil.example", "jwks_uri": provider.jwks_url() }).to_string(),
    );
    let verifier = OidcVerifier::new(settings(&provider, true), client()).expect("verifier");
    let err = verifier
        .verify(&key.sign(&claims(&provider)))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::ProviderInvalid(_)), "{err:?}");
    assert!(err.is_provider_failure());
    assert_eq!(provider.jwks_hits(), 0);
}

#[tokio::test]
async fn expired_token_is_refused_beyond_the_leeway() {
    let (key, provider, verifier) = setup().await;
    let mut c = claims(&provider);
    c["exp"] = json!(now() - 10); // within the 30 s leeway
    verifier.verify(&key.sign(&c)).await.expect("within leeway");
    c["exp"] = json!(now() - 120);
    assert_eq!(
        verifier.verify(&key.sign(&c)).await,
        Err(OidcError::Expired)
    );
}

#[tokio::test]
async fn missing_exp_is_refused() {
    let (key, provider, verifier) = setup().await;
    let mut c = claims(&provider);
    c.as_object_mut().expect("object").remove("exp");
    assert_claim_error(verifier.verify(&key.sign(&c)).await, "exp");
}

#[tokio::test]
async fn token_not_yet_valid_is_refused() {
    let (key, provider, verifier) = setup().await;
    let mut c = claims(&provider);
    c["nbf"] = json!(now() + 10); // within the leeway
    verifier.verify(&key.sign(&c)).await.expect("within leeway");
    c["nbf"] = json!(now() + 120);
    assert_eq!(
        verifier.verify(&key.sign(&c)).await,
        Err(OidcError::NotYetValid)
    );
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let (key, provider, verifier) = setup().await;
    let mut c = claims(&provider);
    c["aud"] = json!("someone-else");
    assert_eq!(
        verifier.verify(&key.sign(&c)).await,
        Err(OidcError::WrongAudience)
    );
    c["aud"] = json!(["someone-else", "another"]);
    assert_eq!(
        verifier.verify(&key.sign(&c)).await,
        Err(OidcError::WrongAudience)
    );
    c["aud"] = json!(AUDIENCE);
    verifier.verify(&key.sign(&c)).await.expect("string aud");
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let (key, provider, verifier) = setup().await;
    let mut c = claims(&provider);
    c["iss"] = json!("https://evil.example");
    assert_eq!(
        verifier.verify(&key.sign(&c)).await,
        Err(OidcError::WrongIssuer)
    );
    c["iss"] = json!(format!("{}/", provider.issuer()));
    assert_eq!(
        verifier.verify(&key.sign(&c)).await,
        Err(OidcError::WrongIssuer)
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (key, provider, verifier) = setup().await;
    let header = json!({ "alg": "none", "typ": "JWT", "kid": key.kid });
    let token = format!("{}.{}.", b64_json(&header), b64_json(&claims(&provider)));
    assert_eq!(
        verifier.verify(&token).await,
        Err(OidcError::UnsupportedAlgorithm("none".to_owned()))
    );
    assert_eq!(provider.jwks_hits(), 0);
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let (key, provider, verifier) = setup().await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(
        &header,
        &claims(&provider),
        &EncodingKey::from_secret(&key.public_point),
    )
    .expect("sign");
    assert_eq!(
        verifier.verify(&token).await,
        Err(OidcError::UnsupportedAlgorithm("HS256".to_owned()))
    );
}

#[tokio::test]
async fn header_alg_differing_from_the_key_is_refused() {
    let (key, provider, verifier) = setup().await;
    // A genuine ES384 signature, but naming the P-256 (ES256) key.
    let other = EcKey::p384("key-384");
    let token = other.sign_as(&key.kid, &claims(&provider));
    assert!(matches!(
        verifier.verify(&token).await,
        Err(OidcError::AlgorithmMismatch { .. })
    ));
    // An RSA algorithm naming the EC key.
    let header = json!({ "alg": "RS256", "kid": key.kid });
    let token = format!(
        "{}.{}.c2ln",
        b64_json(&header),
        b64_json(&claims(&provider))
    );
    assert!(matches!(
        verifier.verify(&token).await,
        Err(OidcError::AlgorithmMismatch { .. })
    ));
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let (key, provider, verifier) = setup().await;
    let token = key.sign(&claims(&provider));
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims(&provider);
    c["realm_access"]["roles"] = json!(["admin"]);
    let tampered = format!("{}.{}.{}", parts[0], b64_json(&c), parts[2]);
    assert_eq!(
        verifier.verify(&tampered).await,
        Err(OidcError::BadSignature)
    );
    verifier
        .verify(&token)
        .await
        .expect("the original verifies");
}

#[tokio::test]
async fn unknown_kid_is_refused_and_refetches_are_rate_limited() {
    let (key, provider, verifier) = setup().await;
    verifier
        .verify(&key.sign(&claims(&provider)))
        .await
        .expect("verifies");
    assert_eq!(provider.jwks_hits(), 1);
    let stranger = EcKey::p256("stranger");
    let token = stranger.sign(&claims(&provider));
    // Default interval (10 s): the fetch a moment ago counts, no refetch.
    assert_eq!(
        verifier.verify(&token).await,
        Err(OidcError::UnknownKey("stranger".to_owned()))
    );
    assert_eq!(provider.jwks_hits(), 1);
    // Without the limit an unknown kid costs one refetch.
    verifier.set_min_refresh_interval(Duration::ZERO);
    assert_eq!(
        verifier.verify(&token).await,
        Err(OidcError::UnknownKey("stranger".to_owned()))
    );
    assert_eq!(provider.jwks_hits(), 2);
}

#[tokio::test]
async fn rotation_refetches_and_drops_the_old_key() {
    let (old, provider, verifier) = setup().await;
    verifier.set_min_refresh_interval(Duration::ZERO);
    let old_token = old.sign(&claims(&provider));
    verifier.verify(&old_token).await.expect("old key verifies");

    let new = EcKey::p256("key-2");
    provider.set_jwks(jwks(&[&new]));
    let identity = verifier
        .verify(&new.sign(&claims(&provider)))
        .await
        .expect("new key verifies after a refetch");
    assert_eq!(identity.subject, "user-1");
    assert_eq!(provider.jwks_hits(), 2);

    assert_eq!(
        verifier.verify(&old_token).await,
        Err(OidcError::UnknownKey("key-1".to_owned()))
    );
}

#[tokio::test]
async fn concurrent_misses_share_one_fetch() {
    let (key, provider, verifier) = setup().await;
    verifier.set_min_refresh_interval(Duration::ZERO);
    let token = key.sign(&claims(&provider));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let verifier = verifier.clone();
            let token = token.clone();
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("join").expect("verifies");
    }
    assert_eq!(provider.jwks_hits(), 1);
}

#[tokio::test]
async fn old_keys_are_refetched_kept_through_an_outage_and_dropped_on_rotation() {
    let (key, provider, verifier) = setup().await;
    verifier.set_min_refresh_interval(Duration::ZERO);
    verifier.set_max_key_age(Duration::ZERO);
    let token = key.sign(&claims(&provider));
    verifier.verify(&token).await.expect("verifies");
    verifier
        .verify(&token)
        .await
        .expect("verifies after a refetch");
    assert_eq!(provider.jwks_hits(), 2);

    provider.set_status(500);
    verifier
        .verify(&token)
        .await
        .expect("cached key kept while the provider fails");
    assert_eq!(provider.jwks_hits(), 3);

    provider.set_status(200);
    provider.set_jwks(jwks(&[&EcKey::p256("key-2")]));
    assert_eq!(
        verifier.verify(&token).await,
        Err(OidcError::UnknownKey("key-1".to_owned()))
    );
}

#[tokio::test]
async fn oversize_token_is_refused_without_a_fetch() {
    let (key, provider, verifier) = setup().await;
    let mut c = claims(&provider);
    c["padding"] = json!("x".repeat(9 * 1024));
    let token = key.sign(&c);
    assert!(token.len() > 8 * 1024);
    assert!(matches!(
        verifier.verify(&token).await,
        Err(OidcError::Malformed(_))
    ));
    assert_eq!(provider.jwks_hits(), 0);
    assert_eq!(provider.discovery_hits(), 0);
}

#[tokio::test]
async fn missing_or_invalid_tenant_is_refused_naming_the_claim() {
    let (key, provider, verifier) = setup().await;
    let mut c = claims(&provider);
    c.as_object_mut().expect("object").remove("tenant");
    assert_claim_error(verifier.verify(&key.sign(&c)).await, "tenant");
    for bad in [
        json!("Acme_Corp"),
        json!("-acme"),
        json!(""),
        json!("a".repeat(64)),
        json!(42),
    ] {
        c["tenant"] = bad;
        assert_claim_error(verifier.verify(&key.sign(&c)).await, "tenant");
    }
    c["tenant"] = json!("a".repeat(63));
    verifier
        .verify(&key.sign(&c))
        .await
        .expect("63 characters is fine");
}

#[tokio::test]
async fn nested_tenant_claim_and_subject_bounds() {
    let key = EcKey::p256("key-1");
    let provider = Provider::start(jwks(&[&key])).await;
    let mut s = settings(&provider, false);
    s.tenant_claim = "org.slug".to_owned();
    s.role_claim = "roles".to_owned();
    let verifier = OidcVerifier::new(s, client()).expect("verifier");
    let mut c = claims(&provider);
    c["org"] = json!({ "slug": "globex" });
    c["roles"] = json!("admin");
    let identity = verifier.verify(&key.sign(&c)).await.expect("verifies");
    assert_eq!(identity.tenant, "globex");
    assert_eq!(identity.roles, vec!["admin".to_owned()]);

    c["roles"] = json!((0..40).map(|i| format!("r{i}")).collect::<Vec<_>>());
    assert_eq!(
        verifier
            .verify(&key.sign(&c))
            .await
            .expect("verifies")
            .roles
            .len(),
        32
    );
    c["roles"] = json!({ "not": "a list" });
    assert_claim_error(verifier.verify(&key.sign(&c)).await, "roles");
    c["roles"] = json!([]);

    c["sub"] = json!("");
    assert_claim_error(verifier.verify(&key.sign(&c)).await, "sub");
    c["sub"] = json!("s".repeat(256));
    assert_claim_error(verifier.verify(&key.sign(&c)).await, "sub");
    c.as_object_mut().expect("object").remove("sub");
    assert_claim_error(verifier.verify(&key.sign(&c)).await, "sub");
}

#[tokio::test]
async fn jwks_over_64_kib_is_refused() {
    let key = EcKey::p256("key-1");
    let mut doc: Value = serde_json::from_str(&jwks(&[&key])).expect("jwks");
    doc["padding"] = json!("x".repeat(65 * 1024));
    let provider = Provider::start(doc.to_string()).await;
    let verifier = verifier(&provider);
    let token = key.sign(&claims(&provider));

    // Streamed, no Content-Length: the read stops past the limit.
    provider.set_send_content_length(false);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::ProviderInvalid(_)), "{err:?}");

    // With Content-Length: refused before reading.
    verifier.set_min_refresh_interval(Duration::ZERO);
    provider.set_send_content_length(true);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, OidcError::ProviderInvalid(_)), "{err:?}");
    assert_eq!(provider.jwks_hits(), 2);

    // The same key set without the padding is fine.
    provider.set_jwks(jwks(&[&key]));
    verifier.verify(&token).await.expect("verifies");
}

#[tokio::test]
async fn unusable_jwks_entries_are_ignored() {
    let key = EcKey::p256("key-1");
    let mut enc = key.jwk();
    enc["use"] = json!("enc");
    let mut hmac = json!({ "kty": "oct", "kid": "key-1", "k": "c2VjcmV0" });
    hmac["alg"] = json!("HS256");
    // Same kid as the real key, listed first, but not usable for signatures.
    let doc = json!({ "keys": [enc, hmac, { "kty": "EC", "kid": "broken" }, key.jwk()] });
    let provider = Provider::start(doc.to_string()).await;
    let verifier = verifier(&provider);
    verifier
        .verify(&key.sign(&claims(&provider)))
        .await
        .expect("verifies");

    // Only an encryption key: nothing usable.
    provider.set_jwks(json!({ "keys": [enc_only(&key)] }).to_string());
    let fresh = OidcVerifier::new(settings(&provider, false), client()).expect("verifier");
    let err = fresh
        .verify(&key.sign(&claims(&provider)))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::ProviderInvalid(_)), "{err:?}");
}

fn enc_only(key: &EcKey) -> Value {
    let mut jwk = key.jwk();
    jwk["use"] = json!("enc");
    jwk
}

#[tokio::test]
async fn unreachable_provider_is_a_provider_failure() {
    let key = EcKey::p256("key-1");
    let provider = Provider::start(jwks(&[&key])).await;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut s = settings(&provider, false);
    s.jwks_url = Some(format!("http://127.0.0.1:{port}/jwks"));
    let verifier = OidcVerifier::new(s, client()).expect("verifier");
    let err = verifier
        .verify(&key.sign(&claims(&provider)))
        .await
        .unwrap_err();
    assert!(matches!(err, OidcError::ProviderUnreachable(_)), "{err:?}");
    assert!(err.is_provider_failure());
}

#[tokio::test]
async fn malformed_tokens_are_refused_without_a_fetch() {
    let (key, provider, verifier) = setup().await;
    let good = key.sign(&claims(&provider));
    let no_kid = {
        let header = json!({ "alg": "ES256" });
        format!(
            "{}.{}.c2ln",
            b64_json(&header),
            b64_json(&claims(&provider))
        )
    };
    let long_kid = {
        let header = json!({ "alg": "ES256", "kid": "k".repeat(129) });
        format!(
            "{}.{}.c2ln",
            b64_json(&header),
            b64_json(&claims(&provider))
        )
    };
    let crit = {
        let header = json!({ "alg": "ES256", "kid": key.kid, "crit": ["exp"] });
        format!(
            "{}.{}.c2ln",
            b64_json(&header),
            b64_json(&claims(&provider))
        )
    };
    for token in [
        "".to_owned(),
        "abc".to_owned(),
        format!("{good}.extra"),
        format!("{good} "),
        no_kid,
        long_kid,
        crit,
    ] {
        let result = verifier.verify(&token).await;
        assert!(
            matches!(result, Err(OidcError::Malformed(_))),
            "{token:?}: {result:?}"
        );
    }
    assert_eq!(provider.jwks_hits(), 0);
}

#[test]
fn settings_are_validated() {
    let build = |value: Value| -> Result<OidcVerifier, OidcError> {
        let settings: OidcSettings = serde_json::from_value(value).expect("settings");
        OidcVerifier::new(settings, client())
    };
    let defaults: OidcSettings =
        serde_json::from_value(json!({ "issuer": "https://id.example", "audience": "a" }))
            .expect("settings");
    assert_eq!(defaults.tenant_claim, "tenant");
    assert_eq!(defaults.role_claim, "roles");
    assert_eq!(defaults.leeway_seconds, 30);
    assert_eq!(defaults.jwks_url, None);

    assert!(build(json!({ "issuer": "https://id.example/realms/vv", "audience": "a" })).is_ok());
    for issuer in [
        "http://localhost:8080",
        "http://127.0.0.1:1",
        "http://[::1]:1",
    ] {
        assert!(
            build(json!({ "issuer": issuer, "audience": "a" })).is_ok(),
            "{issuer}"
        );
    }
    for bad in [
        json!({ "issuer": "http://id.example", "audience": "a" }),
        json!({ "issuer": "ftp://id.example", "audience": "a" }),
        json!({ "issuer": "not a url", "audience": "a" }),
        json!({ "issuer": "https://id.example", "audience": "" }),
        json!({ "issuer": "https://id.example", "audience": "a", "jwks_url": "http://id.example/jwks" }),
        json!({ "issuer": "https://user:pw@id.example", "audience": "a" }),
        json!({ "issuer": "https://id.example", "audience": "a", "tenant_claim": "org..slug" }),
        json!({ "issuer": "https://id.example", "audience": "a", "leeway_seconds": 3600 }),
    ] {
        assert!(
            matches!(build(bad.clone()), Err(OidcError::InvalidSettings(_))),
            "{bad}"
        );
    }
    let unknown = serde_json::from_value::<OidcSettings>(
        json!({ "issuer": "https://id.example", "audience": "a", "jwks": "x" }),
    );
    assert!(unknown.is_err());
}

#[tokio::test]
async fn rsa_keys_verify_with_the_key_algorithm() {
    let rsa = RsaKey::fixed("rsa-any");
    let doc = json!({ "keys": [rsa.jwk(None)] });
    let provider = Provider::start(doc.to_string()).await;
    let verifier = verifier(&provider);
    // No `alg` in the JWK: any accepted RSA algorithm.
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
    ] {
        let identity = verifier
            .verify(&rsa.sign(alg, &claims(&provider)))
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(identity.subject, "user-1");
    }
    // Algorithms outside the accepted set are refused even with a good signature.
    assert_eq!(
        verifier
            .verify(&rsa.sign(Algorithm::PS512, &claims(&provider)))
            .await,
        Err(OidcError::UnsupportedAlgorithm("PS512".to_owned()))
    );

    // `alg` in the JWK: only that one.
    let rsa = RsaKey::fixed("rsa-rs256");
    provider.set_jwks(json!({ "keys": [rsa.jwk(Some("RS256"))] }).to_string());
    verifier.set_min_refresh_interval(Duration::ZERO);
    verifier
        .verify(&rsa.sign(Algorithm::RS256, &claims(&provider)))
        .await
        .expect("RS256 verifies");
    assert!(matches!(
        verifier
            .verify(&rsa.sign(Algorithm::PS256, &claims(&provider)))
            .await,
        Err(OidcError::AlgorithmMismatch { .. })
    ));
    // An ES256 header naming the RSA key.
    let ec = EcKey::p256("ec");
    assert!(matches!(
        verifier
            .verify(&ec.sign_as("rsa-rs256", &claims(&provider)))
            .await,
        Err(OidcError::AlgorithmMismatch { .. })
    ));
}
