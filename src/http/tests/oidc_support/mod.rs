//! Test support: a loopback OIDC provider (discovery + JWKS over hand-written
//! HTTP/1.1) whose answers can be changed at run time, and EC signing keys.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    RsaKeyPair, RsaPublicKeyComponents,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An ECDSA signing key with its public JWK.
pub struct EcKey {
    pub kid: String,
    pub alg: Algorithm,
    pkcs8: Vec<u8>,
    /// The uncompressed public point 0x04 || x || y.
    pub public_point: Vec<u8>,
}

impl EcKey {
    pub fn p256(kid: &str) -> EcKey {
        EcKey::generate(kid, Algorithm::ES256)
    }

    pub fn p384(kid: &str) -> EcKey {
        EcKey::generate(kid, Algorithm::ES384)
    }

    fn generate(kid: &str, alg: Algorithm) -> EcKey {
        let ring_alg = match alg {
            Algorithm::ES256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
            Algorithm::ES384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
            other => panic!("not an EC algorithm: {other:?}"),
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(ring_alg, &rng).expect("generate key");
        let pair = EcdsaKeyPair::from_pkcs8(ring_alg, pkcs8.as_ref(), &rng).expect("load key");
        EcKey {
            kid: kid.to_owned(),
            alg,
            pkcs8: pkcs8.as_ref().to_vec(),
            public_point: pair.public_key().as_ref().to_vec(),
        }
    }

    pub fn jwk(&self) -> Value {
        let coordinate_len = (self.public_point.len() - 1) / 2;
        let x = &self.public_point[1..1 + coordinate_len];
        let y = &self.public_point[1 + coordinate_len..];
        let (crv, alg) = match self.alg {
            Algorithm::ES256 => ("P-256", "ES256"),
            _ => ("P-384", "ES384"),
        };
        json!({
            "kty": "EC",
            "crv": crv,
            "alg": alg,
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        })
    }

    /// Signs `claims` with this key, `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Signs `claims` with this key but names `kid` in the header.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .expect("sign token")
    }
}

/// An RSA signing key (always the same one) with its public JWK.
pub struct RsaKey {
    pub kid: String,
    der: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaKey {
    pub fn fixed(kid: &str) -> RsaKey {
        let der = base64::engine::general_purpose::STANDARD
            .decode(RSA_TEST_KEY_DER_B64)
            .expect("base64");
        let pair = RsaKeyPair::from_der(&der).expect("RSA key");
        let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        RsaKey {
            kid: kid.to_owned(),
            der,
            n: public.n,
            e: public.e,
        }
    }

    /// The public JWK, with `alg` when given.
    pub fn jwk(&self, alg: Option<&str>) -> Value {
        let mut jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&self.n),
            "e": URL_SAFE_NO_PAD.encode(&self.e),
        });
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg);
        }
        jwk
    }

    pub fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(&self.der))
            .expect("sign token")
    }
}

/// A JWKS document holding `keys`.
pub fn jwks(keys: &[&EcKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// `base64url(json)`.
pub fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

struct Answers {
    jwks: String,
    discovery: Option<String>,
    status: u16,
    send_content_length: bool,
}

/// A loopback provider serving `GET /jwks` and
/// `GET /.well-known/openid-configuration`.
pub struct Provider {
    pub addr: SocketAddr,
    answers: Arc<Mutex<Answers>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
}

impl Provider {
    pub async fn start(jwks: String) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let answers = Arc::new(Mutex::new(Answers {
            jwks,
            discovery: None,
            status: 200,
            send_content_length: true,
        }));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let discovery_hits = Arc::new(AtomicUsize::new(0));
        let provider = Provider {
            addr,
            answers: Arc::clone(&answers),
            jwks_hits: Arc::clone(&jwks_hits),
            discovery_hits: Arc::clone(&discovery_hits),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let answers = Arc::clone(&answers);
                let jwks_hits = Arc::clone(&jwks_hits);
                let discovery_hits = Arc::clone(&discovery_hits);
                tokio::spawn(serve(stream, addr, answers, jwks_hits, discovery_hits));
            }
        });
        provider
    }

    /// `http://127.0.0.1:PORT`, the issuer.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn set_jwks(&self, jwks: String) {
        self.answers.lock().expect("answers").jwks = jwks;
    }

    /// Replaces the default discovery document.
    pub fn set_discovery(&self, doc: String) {
        self.answers.lock().expect("answers").discovery = Some(doc);
    }

    /// Answer every request with this status (the body unchanged).
    pub fn set_status(&self, status: u16) {
        self.answers.lock().expect("answers").status = status;
    }

    /// Without Content-Length the client must stream to the end of the
    /// connection.
    pub fn set_send_content_length(&self, send: bool) {
        self.answers.lock().expect("answers").send_content_length = send;
    }

    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn discovery_hits(&self) -> usize {
        self.discovery_hits.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    addr: SocketAddr,
    answers: Arc<Mutex<Answers>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
    let (status, body, send_content_length) = {
        let answers = answers.lock().expect("answers");
        let body = match path.as_str() {
            "/jwks" => {
                jwks_hits.fetch_add(1, Ordering::SeqCst);
                Some(answers.jwks.clone())
            }
            "/.well-known/openid-configuration" => {
                discovery_hits.fetch_add(1, Ordering::SeqCst);
                Some(answers.discovery.clone().unwrap_or_else(|| {
                    json!({
                        "issuer": format!("http://{addr}"),
                        "jwks_uri": format!("http://{addr}/jwks"),
                    })
                    .to_string()
                }))
            }
            _ => None,
        };
        match body {
            Some(body) => (answers.status, body, answers.send_content_length),
            None => (404, "{}".to_owned(), true),
        }
    };
    let mut head =
        format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nConnection: close\r\n");
    if send_content_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A fixed 2048-bit RSA test key (PKCS#1 DER, base64): ring cannot generate
/// RSA keys. Made with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`
/// then `openssl rsa -traditional -outform DER`. Test use only.
const RSA_TEST_KEY_DER_B64: &str = concat!(
    "MIIEogIBAAKCAQEAx3JW3OryuTgjhoZjFkPfeO4zWMpdyH3fWskQbUmV+fiTzLToXoDWHZFGpcRvhviDtMXYAwSHs7gXJVon",
    "aLD+LeXCL9ucc3C4bWSE5TwOOVJE2UGPDgj9lEhApqLUEH21WW6cdzdzdPtUysqo2V0MoGIUWS0uYyHbmsr7CBzWJYj2raO1",
    "vwNlAC7zYPuF80Xt3mqm7S81pMq5Uts+cHM6zxZl3dVliUVtcuXap6CyTvoVGKlW6FNJJHMsW3RIkpqnFarn0N8uuqaPOaot",
    "pTK4Th+GrAYA55lO2iIb9Ntn3CkT7Uj/dVISdyQk1A/k3K6kgirP/u4Fo7bM7EqRRr4GOwIDAQABAoIBADhT7X5VCJoQ5c+f",
    "cqqeHqYbt/qypIv0KLmOIYqMBsRjVPKygRH3lwEgv3Afq1PWKfRLD/fCNsUmD7tn28tweUjjI9W6U1QzGJMkmXfYXzgHKRSm",
    "tE1FcsCHK2Mkh3nk1uvcFmqBCaWXOdpQJCHHasJ9ELwiy4AJ1ui/vOgMpNpSdZ2mtS/+HoTM4UqUuu43uvSiygIUSvrc4IQ1",
    "Xz+9awq33UX49mUsIkxI7DGvhmMq/f1GkC8F6eGXpr7dE0wvyqpwNnEZz5G9K0CuMWOD7mJF8P3QpIsZk4NVE4/YC+uVXNR+",
    "i6XfmcFSclERmsQ1NWUXRY2FwMHtOTmVyGsQYFECgYEA41sldNWelNiOhK4IOQ0PMZStlRa320l9NBfHETiuPeXohtEUmpjt",
    "LiLz/uHhjccyd2FE2jg8MSUm6FpwR3UjCu0QOtIJDaHwGUJ4EidkJX3yA7kPhGFqMfqT8BGAj1MUmkcenC8bAGPwO8Pes310",
    "OYFDbtHdlKiK/sgVEc76mWMCgYEA4JMJ2mnaV8GPuSG1qXGmYLiVp+vDEEn16LBo3zyLuuu2KcSJoRH5gvRWmQBTRdqRSQnj",
    "MAAE0vyijaI4PgKF4r/ZXCmAfdqrhUBF7SlH1QwsMaOslPQVmYjI30PN+rCJRe/BdokEFJflSRlus7uXumdeih50T9iila98",
    "9pVdY0kCgYBMr1yV6MuhVt3TQMQDQjViusxFojEHZOU3IeICHAUhWZ+xgWoarwQo8J8t1FB4urx56bQIirk6tlZGPuLqJ0dX",
    "kxhLTrbBA2LxkirfrKupva5YtR3Xv+fKzcMCUVT0gshLNTvM4FKSMiNAdVNzZRhDoSb2hRDg6GxhfWkl5ZM/EwKBgAi0KjGY",
    "4Kl+Cv/12oCSswwUm1hCvvCmrS0ziRz9z7yS3iCISX1AoRb+OUz8wj121yKpi3CUz5sNx48NtnhQyLedD+OOiDhYfUVQ1GT4",
    "sJwFOMFDwrCTNTMaJg7hJd6NcQSQ4kKh1NKngG9w2OWGY78JupRH0eI2VzbN8l3sNA5hAoGAIfRFVNYtL9JjTRmL9dgf+PWr",
    "Hr++TJ9HEwFX/xvtpdpYkbQ0jHZY/29FwZlQZ9RW3Zb8nqsQ6Wi0cUZJSkl5dKSYb3vflOs23xsM/ErOOQR/bUZ+avoM7YxV",
    "hFofoEQHyg5ywDOQ0BtteOLTcAIewN15FubPpXnRSAi0Y0PxhcQ=",
);
