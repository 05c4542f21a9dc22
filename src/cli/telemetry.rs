//! Spans exported as OpenTelemetry (OTLP over HTTP) when an endpoint is set:
//! `--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. The SDK itself honours the other
//! `OTEL_*` variables (headers, timeout, protocol, sampler, batch sizes,
//! service name and resource attributes). With none set nothing is built:
//! messages carry no trace context and pay one relaxed load for it.

use anyhow::{Context, bail};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The exporter's provider: dropping it flushes the spans not yet sent.
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("valueverse: flushing spans at exit: {error}");
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// Whether spans are to be exported, and where (`None`: the variables say).
fn wanted(flag: Option<&url::Url>) -> anyhow::Result<Option<Option<String>>> {
    let exporters = env("OTEL_TRACES_EXPORTER").map(|names| names.to_ascii_lowercase());
    let named = |name: &str| {
        exporters
            .as_deref()
            .is_some_and(|names| names.split(',').any(|each| each.trim() == name))
    };
    if env("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || named("none")
    {
        return Ok(None);
    }
    // The exporter's client has no TLS (a collector runs beside the node,
    // as the OpenTelemetry Collector or an agent does, and forwards).
    let plain = |name: &str, url: &str| {
        if url.starts_with("http://") {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{name} {url}: an http:// collector address is needed (this build sends OTLP \
                 without TLS: run a collector beside the node to forward it)"
            ))
        }
    };
    let endpoint = if let Some(url) = flag {
        plain("--otlp-endpoint", url.as_str())?;
        // A base address, as OTEL_EXPORTER_OTLP_ENDPOINT is: the signal's path is added.
        let base = url.as_str().trim_end_matches('/');
        Some(format!("{base}/v1/traces"))
    } else {
        let mut from_env = false;
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            if let Some(url) = env(name) {
                plain(name, &url)?;
                from_env = true;
            }
        }
        if !from_env {
            // No collector: the other variables are not this node's business.
            return Ok(None);
        }
        None
    };
    if let Some(other) = exporters
        .as_deref()
        .and_then(|names| names.split(',').map(str::trim).find(|name| *name != "otlp"))
    {
        bail!("OTEL_TRACES_EXPORTER={other}: this build exports spans with `otlp` only");
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = env(name)
            && !matches!(protocol.as_str(), "http/protobuf" | "http/json")
        {
            bail!(
                "{name}={protocol}: this build exports OTLP over HTTP (http/protobuf or http/json)"
            );
        }
    }
    Ok(Some(endpoint))
}

/// The tracer spans go to, when an endpoint is set; the node's name is the
/// resource's `service.instance.id`.
pub fn tracer(
    flag: Option<&url::Url>,
    node_name: &str,
) -> anyhow::Result<Option<(Exporting, SdkTracer)>> {
    let Some(endpoint) = wanted(flag)? else {
        return Ok(None);
    };
    let mut exporter = SpanExporter::builder().with_http();
    // OTLP's default protocol, unless a variable names another (with both
    // built in, the library's own default would be JSON).
    let protocol_set = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .any(|name| env(name).is_some());
    if !protocol_set {
        exporter = exporter.with_protocol(Protocol::HttpBinary);
    }
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().context("the OTLP span exporter")?;
    let mut resource = Resource::builder().with_attributes([
        KeyValue::new("service.instance.id", node_name.to_owned()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ]);
    // The variables name the service when they do; else it is ValueVerse.
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|value| value.contains("service.name="));
    if !named {
        resource = resource.with_service_name("valueverse");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("valueverse");
    Ok(Some((Exporting { provider }, tracer)))
}
