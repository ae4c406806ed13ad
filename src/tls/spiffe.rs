//! The workload identity: a SPIFFE ID as Istio writes it in the URI SAN of a
//! workload certificate, `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.

use std::fmt;
use std::str::FromStr;

/// A parsed Istio SPIFFE ID. Authorization reads its namespace and, through
/// [`SpiffeId::principal`], the form Istio's policies write (no `spiffe://`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a URI is not an Istio SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("`{0}` does not start with spiffe://")]
    Scheme(String),
    #[error(
        "`{0}` has an empty or invalid trust domain (lowercase letters, digits, '.', '-', '_')"
    )]
    TrustDomain(String),
    #[error("`{0}` is not of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT")]
    Path(String),
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// Parses `spiffe://TD/ns/NS/sa/SA`. Only Istio's path shape is accepted:
    /// other SPIFFE paths (SPIRE's free-form ones) name no namespace, and
    /// authorization by namespace would silently never match them.
    pub fn parse(uri: &str) -> Result<SpiffeId, SpiffeError> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeError::Scheme(uri.to_string()))?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        // The SPIFFE spec's trust domain charset (SPIFFE-ID §2.1).
        let td_ok = !td.is_empty()
            && td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if !td_ok {
            return Err(SpiffeError::TrustDomain(uri.to_string()));
        }
        let mut segs = path.split('/');
        match (
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if !ns.is_empty() && !sa.is_empty() =>
            {
                Ok(SpiffeId::new(td, ns, sa))
            }
            _ => Err(SpiffeError::Path(uri.to_string())),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The principal as Istio's AuthorizationPolicy writes it:
    /// `TD/ns/NS/sa/SA`, without the scheme.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_istio_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "sleep");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(
            "spiffe://td/ns/a/sa/b".parse::<SpiffeId>().unwrap(),
            SpiffeId::new("td", "a", "b")
        );
    }

    #[test]
    fn rejects_what_is_not_an_istio_id() {
        let table = [
            ("http://cluster.local/ns/a/sa/b", "scheme"),
            ("spiffe://", "td"),
            ("spiffe:///ns/a/sa/b", "td"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "td"),
            ("spiffe://td", "path"),
            ("spiffe://td/", "path"),
            ("spiffe://td/ns/a", "path"),
            ("spiffe://td/ns//sa/b", "path"),
            ("spiffe://td/ns/a/sa/", "path"),
            ("spiffe://td/ns/a/sa/b/extra", "path"),
            ("spiffe://td/workload/x", "path"),
        ];
        for (uri, want) in table {
            let got = match SpiffeId::parse(uri) {
                Err(SpiffeError::Scheme(_)) => "scheme",
                Err(SpiffeError::TrustDomain(_)) => "td",
                Err(SpiffeError::Path(_)) => "path",
                Ok(id) => panic!("{uri} parsed as {id}"),
            };
            assert_eq!(got, want, "{uri}");
        }
    }
}
