//! Where webhooks may be sent. By default only to public addresses: a
//! webhook URL is chosen by any editor, and without this check the node
//! would POST for them to its own database port, the cloud metadata
//! service or anything else on its private network (SSRF). A host is
//! checked at registration and resolved again at every delivery, where the
//! HTTP client connects only to the addresses that passed (its DNS resolver
//! is this policy), so a name that later resolves elsewhere gains nothing.
//! Internal receivers are allowed by network in `notifier.allow_networks`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Why a webhook target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "{addr} is {reason}; webhooks go to public addresses (or networks in notifier.allow_networks)"
    )]
    Forbidden { addr: IpAddr, reason: &'static str },
    #[error("cannot resolve {host}: {reason}")]
    Unresolvable { host: String, reason: String },
    #[error("the URL has no host")]
    NoHost,
}

/// What kind of non-public address `ip` is; `None` for a public one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let octets = v4.octets();
            if v4.is_unspecified() {
                Some("unspecified")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata lives here)")
            } else if octets[0] == 100 && (64..128).contains(&octets[1]) {
                Some("shared address space (carrier-grade NAT)")
            } else if octets[0] == 0 {
                Some("this network")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() || octets[0] >= 240 {
                Some("reserved")
            } else if v4.is_documentation() || (octets[0] == 198 && (18..20).contains(&octets[1])) {
                Some("reserved for documentation or benchmarking")
            } else if octets[..3] == [192, 0, 0] {
                Some("IETF protocol assignments")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if segments[0] & 0xfe00 == 0xfc00 {
                Some("unique local (private)")
            } else if segments[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64: the IPv4 address it stands for decides.
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                non_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
                Some("reserved for documentation")
            } else {
                None
            }
        }
    }
}

/// The webhook target policy of a node.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    allow: Vec<IpNet>,
}

impl TargetPolicy {
    pub fn new(allow: Vec<IpNet>) -> TargetPolicy {
        TargetPolicy { allow }
    }

    /// Whether a delivery may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), TargetError> {
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match non_public(ip) {
            Some(reason) => Err(TargetError::Forbidden { addr: ip, reason }),
            None => Ok(()),
        }
    }

    /// Every address `url`'s host stands for, checked: all must pass.
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), TargetError> {
        let port = url.port_or_known_default().unwrap_or(80);
        for addr in self.resolve(url, port).await? {
            self.check(addr.ip())?;
        }
        Ok(())
    }

    async fn resolve(&self, url: &reqwest::Url, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
        match url.host() {
            None => Err(TargetError::NoHost),
            Some(url::Host::Ipv4(ip)) => Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)]),
            Some(url::Host::Ipv6(ip)) => Ok(vec![SocketAddr::new(IpAddr::V6(ip), port)]),
            Some(url::Host::Domain(host)) => lookup(host, port).await,
        }
    }

    /// The DNS resolver of the delivery client: only addresses that pass.
    pub fn resolver(&self) -> Arc<CheckedResolver> {
        Arc::new(CheckedResolver {
            policy: self.clone(),
        })
    }
}

async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
    let unresolvable = |reason: String| TargetError::Unresolvable {
        host: host.to_owned(),
        reason,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| unresolvable(error.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(unresolvable("no address".into()));
    }
    Ok(addrs)
}

/// Resolves a delivery's host and keeps only the addresses the policy
/// allows: the connection is made to one of those, never to another.
pub struct CheckedResolver {
    policy: TargetPolicy,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = lookup(&host, 0).await?;
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(error) => {
                        refused = Some(error);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(error)) => {
                    Err(Box::new(error) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Checked on the address alone: no test connects to these ranges.
    #[test]
    fn non_public_ranges_are_refused_and_public_ones_pass() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(non_public(ip(refused)).is_some(), "{refused} passed");
            assert!(TargetPolicy::default().check(ip(refused)).is_err());
        }
        for public in [
            "93.184.215.14",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "64:ff9b::101:101",
        ] {
            assert_eq!(non_public(ip(public)), None, "{public}");
        }
        let allowed = TargetPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(allowed.check(ip("127.0.0.1")).is_ok());
        assert!(allowed.check(ip("10.0.0.1")).is_err());
    }

    #[tokio::test]
    async fn names_are_checked_on_what_they_resolve_to() {
        let policy = TargetPolicy::default();
        let url = reqwest::Url::parse("http://localhost:9/hook").unwrap();
        let refused = policy.check_url(&url).await.unwrap_err();
        assert!(
            matches!(refused, TargetError::Forbidden { .. }),
            "{refused}"
        );
        let metadata = reqwest::Url::parse("http://169.254.169.254/latest/meta-data").unwrap();
        assert!(policy.check_url(&metadata).await.is_err());
        // The delivery client's resolver gives no address that fails.
        let resolved =
            reqwest::dns::Resolve::resolve(&*policy.resolver(), "localhost".parse().unwrap()).await;
        assert!(resolved.is_err());
        let loopback = TargetPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        let addrs: Vec<SocketAddr> =
            reqwest::dns::Resolve::resolve(&*loopback.resolver(), "localhost".parse().unwrap())
                .await
                .unwrap()
                .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|addr| addr.ip().is_loopback()));
    }
}
