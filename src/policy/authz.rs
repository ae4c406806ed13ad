//! Authorization at inbound: Istio's `AuthorizationPolicy` (ALLOW, DENY, AUDIT)
//! compiled into plain values, and a pure evaluator over one connection or
//! request ([`AuthzPolicies::evaluate`]).
//!
//! ```text
//! config ─ config::security validates [[authorization_policy]] ─► AuthzPolicies (in the snapshot)
//! per TCP connection (http: None) or per HTTP request (http: Some):
//!   AuthzInput { peer principal, addresses, SNI, method/path/host/headers }
//!     ─ evaluate ─► Verdict { allowed, deciding policy + rule, audited policies }
//!                     denied: HTTP 403 "RBAC: access denied" (flag RBAC) / close the TCP connection
//! ```
//!
//! # Istio's semantics, and where they come from
//!
//! Istio translates each policy into Envoy RBAC filters in the order AUDIT,
//! DENY, ALLOW (pilot `pkg/security/authz/builder/builder.go`, `BuildHTTP` /
//! `BuildTCP`); CUSTOM (external authorization) is not supported here and is
//! refused by config validation. So:
//! - AUDIT policies are all evaluated and reported, and never change the verdict.
//! - Any matching DENY policy denies, named as the deciding policy.
//! - If at least one ALLOW policy exists, a request must match one, else it is
//!   denied (with no deciding policy: Envoy's "no matching policy"). With no
//!   ALLOW policy the request is allowed.
//! - A policy with no rules matches nothing (the builder installs
//!   `rbacPolicyMatchNever` for it). An ALLOW policy with no rules therefore
//!   still makes "an ALLOW policy exists" true: allow-nothing, i.e. deny all.
//!   A rule with no `from`, `to` and `when` (`{}`) matches everything.
//! - Within a rule, `from`, `to` and `when` are ANDed; the entries of `from`
//!   and of `to` are ORed; the fields of one `source` / `operation` are ANDed;
//!   the values of one field are ORed and its `not_` values are a NOT of their
//!   OR (pilot `pkg/security/authz/model/model.go`, `rule.permission` /
//!   `rule.principal`). A `not_` value over an absent attribute (no peer
//!   certificate, no SNI, no such header) therefore matches.
//!
//! # HTTP-only fields on a TCP connection
//!
//! `methods`, `paths`, `hosts` (and their `not_` forms) and
//! `request.headers[...]` exist only on HTTP. Istio's generators return the
//! error `"... is HTTP only"` for them when building the TCP filter
//! (`model/generator.go`, `if forTCP`), and `rule.checkError` decides by
//! action (`model/model.go`):
//! - ALLOW: the error drops the whole rule from the TCP filter ("skipped rule
//!   ... on TCP filter chain", `builder.go`), "effectively result in a smaller
//!   allow policy". So on L4 such a rule never matches, even if another `to`
//!   entry of it is L4-only.
//! - DENY and AUDIT: the error is ignored, only the HTTP-only field is dropped,
//!   "effectively resulting in a wider deny or audit policy". A DENY rule whose
//!   only condition is `methods = ["POST"]` therefore denies every TCP
//!   connection (an operation left empty becomes `any: true`,
//!   `generatePermission`).
//!
//! # Matching (pilot `pkg/security/authz/matcher`)
//! - principals: written without `spiffe://` (`cluster.local/ns/default/sa/sleep`),
//!   `StringMatcherWithPrefix(v, "spiffe://")`: `*` = any non-empty principal,
//!   `prefix*`, `*suffix`, else exact. Needs a peer certificate.
//! - namespaces: regex `.*/ns/<v>/.*` over the principal with each `*` of the
//!   value as `.*` (`srcNamespaceGenerator`); here a glob with the same meaning,
//!   other characters literal (Kubernetes namespaces have no regex characters).
//! - ip_blocks, `source.ip`, `destination.ip`: an address or CIDR (the peer's
//!   address, Envoy's `direct_remote_ip`).
//! - methods, `request.headers[...]` values: Envoy header matchers
//!   (`HeaderMatcher`): `*` = present, `*suffix`, `prefix*`, exact;
//!   case-sensitive.
//! - hosts: the same, case-insensitive (`HostMatcher`), against the Host
//!   header as sent (with its port, if any).
//! - paths, `connection.sni`: `StringMatcher`: `*` = non-empty, `*suffix`,
//!   `prefix*`, exact; the path without its query string (Envoy's `url_path`).
//! - ports, `destination.port`: exact.
//!
//! Nothing here touches a socket or a clock; this module imports nothing else
//! from the crate.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// What a policy does when one of its rules matches (Istio's `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

/// One `[[authorization_policy]]`, compiled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthzPolicy {
    /// Position in [`AuthzPolicies::policies`] (file order): lets per-policy
    /// counters be plain arrays indexed by it.
    pub index: usize,
    pub name: String,
    pub action: Action,
    /// Empty: the policy matches nothing (Istio: no rules, no match).
    pub rules: Vec<Rule>,
}

/// One rule: `from` AND `to` AND every `when`; an empty `from` or `to` is any.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Rule {
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_from")]
    pub from: Vec<Source>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_to")]
    pub to: Vec<Operation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `from = [{ source = { ... } }]`: who calls. Fields are ANDed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Source {
    pub principals: Field<StrMatch>,
    pub namespaces: Field<StrMatch>,
    pub ip_blocks: Field<Cidr>,
}

/// `to = [{ operation = { ... } }]`: what is called. Fields are ANDed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Operation {
    pub ports: Field<u16>,
    pub methods: Field<StrMatch>,
    pub paths: Field<StrMatch>,
    pub hosts: Field<StrMatch>,
}

/// One `when` condition, by key.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `request.headers[NAME]`; `name` is lower case.
    RequestHeader {
        name: String,
        field: Field<StrMatch>,
    },
    SourceIp(Field<Cidr>),
    SourceNamespace(Field<StrMatch>),
    SourcePrincipal(Field<StrMatch>),
    DestinationIp(Field<Cidr>),
    DestinationPort(Field<u16>),
    ConnectionSni(Field<StrMatch>),
}

/// Values (any may match; none = no constraint) and `not_` values (none may match).
#[derive(Debug, Clone, PartialEq)]
pub struct Field<T> {
    pub values: Vec<T>,
    pub not_values: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Field {
            values: Vec::new(),
            not_values: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    pub fn new(values: Vec<T>, not_values: Vec<T>) -> Field<T> {
        Field { values, not_values }
    }

    /// Whether the field constrains anything (Istio skips empty ones).
    pub fn is_set(&self) -> bool {
        !self.values.is_empty() || !self.not_values.is_empty()
    }

    fn matches(&self, hit: impl Fn(&T) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&hit)) && !self.not_values.iter().any(hit)
    }
}

/// A string matcher as Istio generates it, keeping the value as written for
/// `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrMatch {
    written: Box<str>,
    pattern: Pattern,
    /// Hosts only (Istio's `HostMatcher` sets `ignore_case`); the pattern is
    /// stored in lower case.
    ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Envoy's `present_match`: the attribute exists (it may be empty).
    Present,
    /// Regex `.+`: exists and is not empty.
    NonEmpty,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// `*` matches any run of characters; anchored at both ends. Parts are
    /// the text between stars, so there are at least two.
    Glob(Box<[Box<str>]>),
}

/// Which of Istio's matcher builders a value goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// `StringMatcherWithPrefix(v, "spiffe://")`: principals, `source.principal`.
    Principal,
    /// `.*/ns/<v>/.*` over the principal: namespaces, `source.namespace`.
    Namespace,
    /// `HeaderMatcher`: methods, `request.headers[...]`.
    Header,
    /// `HostMatcher`: hosts (case-insensitive).
    Host,
    /// `StringMatcher`: paths, `connection.sni`.
    Plain,
}

const SPIFFE: &str = "spiffe://";

impl StrMatch {
    /// Compiles `v` the way Istio's matcher of `kind` does. Callers validate
    /// first (`StrMatch::check`); any string compiles.
    pub fn new(kind: MatchKind, v: &str) -> StrMatch {
        let lead = v.strip_prefix('*');
        let trail = v.strip_suffix('*');
        let pattern = match kind {
            MatchKind::Namespace => {
                // `.*/ns/<v>/.*` with each `*` of v as `.*`: a glob.
                let glob = format!("*/ns/{v}/*");
                Pattern::Glob(glob.split('*').map(Box::from).collect())
            }
            MatchKind::Principal => match (v, lead, trail) {
                ("*", _, _) => Pattern::NonEmpty,
                // Regex `spiffe://.*<suffix>`: starts with spiffe://, ends with suffix.
                (_, Some(suffix), _) => Pattern::Glob(Box::new([SPIFFE.into(), suffix.into()])),
                (_, None, Some(prefix)) => Pattern::Prefix(format!("{SPIFFE}{prefix}").into()),
                _ => Pattern::Exact(format!("{SPIFFE}{v}").into()),
            },
            MatchKind::Header | MatchKind::Host | MatchKind::Plain => {
                let any = if kind == MatchKind::Plain {
                    Pattern::NonEmpty
                } else {
                    Pattern::Present
                };
                let fold = |s: &str| -> Box<str> {
                    if kind == MatchKind::Host {
                        s.to_ascii_lowercase().into()
                    } else {
                        s.into()
                    }
                };
                match (v, lead, trail) {
                    ("*", _, _) => any,
                    (_, Some(suffix), _) => Pattern::Suffix(fold(suffix)),
                    (_, None, Some(prefix)) => Pattern::Prefix(fold(prefix)),
                    _ => Pattern::Exact(fold(v)),
                }
            }
        };
        StrMatch {
            written: v.into(),
            pattern,
            ignore_case: kind == MatchKind::Host,
        }
    }

    /// Why `v` is not a value Istio means for `kind`, if it is not. Istio
    /// accepts these but silently treats them as literals that never match
    /// what the user meant (a `*` in the middle is no wildcard there, and a
    /// principal written with `spiffe://` gets a second one prepended), so
    /// Remora refuses them with the reason.
    pub fn check(kind: MatchKind, v: &str) -> Result<(), String> {
        if v.is_empty() {
            return Err("an empty value matches nothing; remove it".into());
        }
        if kind == MatchKind::Principal && v.starts_with(SPIFFE) {
            return Err(format!(
                "write principals without `spiffe://`, as Istio does (`{}`)",
                &v[SPIFFE.len()..]
            ));
        }
        // Header values keep Istio's rule exactly: a leading or trailing `*`
        // is the wildcard, any other `*` is literal (`*/*` is "ends with /*").
        // Namespaces take `*` anywhere.
        if matches!(kind, MatchKind::Header | MatchKind::Namespace) {
            return Ok(());
        }
        let inner = v
            .strip_prefix('*')
            .or_else(|| v.strip_suffix('*'))
            .unwrap_or(v);
        if v != "*" && inner.contains('*') {
            return Err(format!(
                "`{v}`: `*` is a wildcard only as the whole value, the first or the last character (Istio's prefix and suffix match)"
            ));
        }
        Ok(())
    }

    /// The value as written in the config.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// Whether the attribute `s` (None: absent) matches.
    pub fn matches(&self, s: Option<&str>) -> bool {
        let Some(s) = s else { return false };
        let ic = self.ignore_case;
        let eq = |a: &[u8], b: &[u8]| {
            if ic {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        let s = s.as_bytes();
        match &self.pattern {
            Pattern::Present => true,
            Pattern::NonEmpty => !s.is_empty(),
            Pattern::Exact(p) => eq(s, p.as_bytes()),
            Pattern::Prefix(p) => s.len() >= p.len() && eq(&s[..p.len()], p.as_bytes()),
            Pattern::Suffix(p) => s.len() >= p.len() && eq(&s[s.len() - p.len()..], p.as_bytes()),
            Pattern::Glob(parts) => glob(parts, s),
        }
    }
}

/// Anchored glob over bytes: `parts` are the texts around the stars. Taking
/// each middle part at its leftmost occurrence is optimal for `*`-only globs.
fn glob(parts: &[Box<str>], s: &[u8]) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return false;
    };
    let Some(mut s) = s.strip_prefix(first.as_bytes()) else {
        return false;
    };
    for m in middle
        .iter()
        .map(|m| m.as_bytes())
        .filter(|m| !m.is_empty())
    {
        match s.windows(m.len()).position(|w| w == m) {
            Some(i) => s = &s[i + m.len()..],
            None => return false,
        }
    }
    s.ends_with(last.as_bytes())
}

impl fmt::Display for StrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

/// An address block (Istio's `ipBlocks` entries: `1.2.3.4` or `10.0.0.0/8`);
/// host bits are cleared, as Envoy's `CidrRange` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d; it is
        // still the IPv4 address the policy names.
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask(self.prefix, 32) as u32 == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask(self.prefix, 128) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-wide address set.
fn mask(prefix: u8, bits: u32) -> u128 {
    if prefix == 0 {
        0
    } else {
        (u128::MAX << (128 - u32::from(prefix))) >> (128 - bits)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || {
            format!("`{s}` is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"fd00::/8\", \"10.1.2.3\")")
        };
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(bad()),
            },
            Some(_) => return Err(bad()),
        };
        let addr = match ip {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask(prefix, 32) as u32)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask(prefix, 128))),
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for StrMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written)
    }
}

/// What one connection or request offers to the policies.
#[derive(Clone, Copy)]
pub struct AuthzInput<'a> {
    /// The peer's SPIFFE ID as the TLS layer extracted it
    /// (`spiffe://cluster.local/ns/default/sa/sleep`); None on plaintext.
    pub source_principal: Option<&'a str>,
    /// The peer's address (Envoy's `direct_remote_ip`).
    pub source_ip: IpAddr,
    /// The original destination.
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// The SNI of the client's TLS handshake, if any.
    pub sni: Option<&'a str>,
    /// None for a TCP connection (the L4 path), Some per HTTP request.
    pub http: Option<HttpInput<'a>>,
}

/// The HTTP parts of a request.
#[derive(Clone, Copy)]
pub struct HttpInput<'a> {
    pub method: &'a str,
    /// The request target's path; a query string is ignored here.
    pub path: &'a str,
    /// The Host header (`:authority`) as sent; None when absent (HTTP/1.0).
    pub host: Option<&'a str>,
    /// A header's value by lower-case name; several lines of one header
    /// joined with "," as Envoy presents them to its header matchers.
    pub headers: &'a dyn Fn(&str) -> Option<&'a str>,
}

/// The outcome of [`AuthzPolicies::evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict<'p> {
    pub allowed: bool,
    /// The deciding policy: the matching DENY one when denied, the matching
    /// ALLOW one when allowed by it; None when no policy matched (denied
    /// because ALLOW policies exist and none matched, or allowed because
    /// there are none).
    pub policy: Option<&'p AuthzPolicy>,
    /// Index of the deciding rule within `policy` (Istio names it
    /// `ns[NS]-policy[NAME]-rule[i]` in Envoy's RBAC stats and logs).
    pub rule: Option<usize>,
    /// Every AUDIT policy that matched, in file order.
    pub audited: Vec<&'p AuthzPolicy>,
}

impl Verdict<'_> {
    /// The deciding policy's name, for the access log and the deny log line.
    pub fn policy_name(&self) -> Option<&str> {
        self.policy.map(|p| p.name.as_str())
    }
}

/// Every authorization policy of the workload, in file order.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct AuthzPolicies {
    policies: Vec<AuthzPolicy>,
}

impl AuthzPolicies {
    /// Takes the policies in file order and numbers them (`index`).
    pub fn new(mut policies: Vec<AuthzPolicy>) -> AuthzPolicies {
        for (i, p) in policies.iter_mut().enumerate() {
            p.index = i;
        }
        AuthzPolicies { policies }
    }

    pub fn policies(&self) -> &[AuthzPolicy] {
        &self.policies
    }

    /// No policy at all: everything is allowed without evaluating anything.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Istio's verdict for one TCP connection (`http: None`) or HTTP request.
    pub fn evaluate<'p>(&'p self, input: &AuthzInput<'_>) -> Verdict<'p> {
        let audited = self
            .of(Action::Audit)
            .filter(|p| p.matching_rule(input).is_some())
            .collect();
        for p in self.of(Action::Deny) {
            if let Some(rule) = p.matching_rule(input) {
                return Verdict {
                    allowed: false,
                    policy: Some(p),
                    rule: Some(rule),
                    audited,
                };
            }
        }
        let mut any_allow = false;
        for p in self.of(Action::Allow) {
            any_allow = true;
            if let Some(rule) = p.matching_rule(input) {
                return Verdict {
                    allowed: true,
                    policy: Some(p),
                    rule: Some(rule),
                    audited,
                };
            }
        }
        Verdict {
            allowed: !any_allow,
            policy: None,
            rule: None,
            audited,
        }
    }

    fn of(&self, action: Action) -> impl Iterator<Item = &AuthzPolicy> {
        self.policies.iter().filter(move |p| p.action == action)
    }
}

impl AuthzPolicy {
    /// The first rule that matches, if any.
    pub fn matching_rule(&self, input: &AuthzInput<'_>) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.matches(input, self.action))
    }
}

impl Rule {
    /// Whether the rule names an HTTP-only attribute anywhere.
    pub fn needs_http(&self) -> bool {
        self.to
            .iter()
            .any(|o| o.methods.is_set() || o.paths.is_set() || o.hosts.is_set())
            || self
                .when
                .iter()
                .any(|c| matches!(c, Condition::RequestHeader { .. }))
    }

    fn matches(&self, input: &AuthzInput<'_>, action: Action) -> bool {
        // On TCP an ALLOW rule with an HTTP-only attribute is skipped whole;
        // DENY and AUDIT drop only the attribute (module docs; Istio
        // model.go `checkError`). The per-field code below treats a missing
        // `http` as "matched" for the DENY/AUDIT case.
        if input.http.is_none() && action == Action::Allow && self.needs_http() {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(input)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(input)))
            && self.when.iter().all(|c| c.matches(input))
    }
}

impl Source {
    fn matches(&self, input: &AuthzInput<'_>) -> bool {
        let principal = input.source_principal;
        self.principals.matches(|m| m.matches(principal))
            && self.namespaces.matches(|m| m.matches(principal))
            && self.ip_blocks.matches(|c| c.contains(input.source_ip))
    }
}

impl Operation {
    fn matches(&self, input: &AuthzInput<'_>) -> bool {
        if !self.ports.matches(|p| *p == input.destination_port) {
            return false;
        }
        let Some(http) = &input.http else {
            // TCP: HTTP-only fields are dropped (reached for DENY/AUDIT only).
            return true;
        };
        let path = url_path(http.path);
        self.methods.matches(|m| m.matches(Some(http.method)))
            && self.paths.matches(|m| m.matches(Some(path)))
            && self.hosts.matches(|m| m.matches(http.host))
    }
}

impl Condition {
    fn matches(&self, input: &AuthzInput<'_>) -> bool {
        match self {
            Condition::RequestHeader { name, field } => match &input.http {
                None => true,
                Some(http) => {
                    let value = (http.headers)(name);
                    field.matches(|m| m.matches(value))
                }
            },
            Condition::SourceIp(f) => f.matches(|c| c.contains(input.source_ip)),
            Condition::SourceNamespace(f) | Condition::SourcePrincipal(f) => {
                f.matches(|m| m.matches(input.source_principal))
            }
            Condition::DestinationIp(f) => f.matches(|c| c.contains(input.destination_ip)),
            Condition::DestinationPort(f) => f.matches(|p| *p == input.destination_port),
            Condition::ConnectionSni(f) => f.matches(|m| m.matches(input.sni)),
        }
    }

    /// The key as written in the config.
    pub fn key(&self) -> String {
        match self {
            Condition::RequestHeader { name, .. } => format!("request.headers[{name}]"),
            Condition::SourceIp(_) => "source.ip".into(),
            Condition::SourceNamespace(_) => "source.namespace".into(),
            Condition::SourcePrincipal(_) => "source.principal".into(),
            Condition::DestinationIp(_) => "destination.ip".into(),
            Condition::DestinationPort(_) => "destination.port".into(),
            Condition::ConnectionSni(_) => "connection.sni".into(),
        }
    }
}

/// Envoy's `url_path`: the path without query string or fragment.
fn url_path(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

// `/config_dump` shows policies in the shape the file writes them:
// `from = [{ source = { principals = [...] } }]`, values as written.

#[derive(Serialize)]
struct FromEntry<'a> {
    source: &'a Source,
}

#[derive(Serialize)]
struct ToEntry<'a> {
    operation: &'a Operation,
}

fn ser_from<S: Serializer>(v: &[Source], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|source| FromEntry { source }))
}

fn ser_to<S: Serializer>(v: &[Operation], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|operation| ToEntry { operation }))
}

fn strings<T: fmt::Display>(v: &[T]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

fn ser_fields<S: Serializer, const N: usize>(
    s: S,
    name: &'static str,
    fields: [(&'static str, &'static str, Vec<String>, Vec<String>); N],
) -> Result<S::Ok, S::Error> {
    let mut st = s.serialize_struct(name, 2 * N)?;
    for (key, not_key, values, not_values) in fields {
        if values.is_empty() {
            st.skip_field(key)?;
        } else {
            st.serialize_field(key, &values)?;
        }
        if not_values.is_empty() {
            st.skip_field(not_key)?;
        } else {
            st.serialize_field(not_key, &not_values)?;
        }
    }
    st.end()
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = |f: &Field<StrMatch>| (strings(&f.values), strings(&f.not_values));
        let (p, np) = f(&self.principals);
        let (n, nn) = f(&self.namespaces);
        ser_fields(
            s,
            "source",
            [
                ("principals", "not_principals", p, np),
                ("namespaces", "not_namespaces", n, nn),
                (
                    "ip_blocks",
                    "not_ip_blocks",
                    strings(&self.ip_blocks.values),
                    strings(&self.ip_blocks.not_values),
                ),
            ],
        )
    }
}

impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = |f: &Field<StrMatch>| (strings(&f.values), strings(&f.not_values));
        let (m, nm) = f(&self.methods);
        let (p, np) = f(&self.paths);
        let (h, nh) = f(&self.hosts);
        ser_fields(
            s,
            "operation",
            [
                (
                    "ports",
                    "not_ports",
                    strings(&self.ports.values),
                    strings(&self.ports.not_values),
                ),
                ("methods", "not_methods", m, nm),
                ("paths", "not_paths", p, np),
                ("hosts", "not_hosts", h, nh),
            ],
        )
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (values, not_values) = match self {
            Condition::RequestHeader { field: f, .. }
            | Condition::SourceNamespace(f)
            | Condition::SourcePrincipal(f)
            | Condition::ConnectionSni(f) => (strings(&f.values), strings(&f.not_values)),
            Condition::SourceIp(f) | Condition::DestinationIp(f) => {
                (strings(&f.values), strings(&f.not_values))
            }
            Condition::DestinationPort(f) => (strings(&f.values), strings(&f.not_values)),
        };
        let mut st = s.serialize_struct("condition", 3)?;
        st.serialize_field("key", &self.key())?;
        if values.is_empty() {
            st.skip_field("values")?;
        } else {
            st.serialize_field("values", &values)?;
        }
        if not_values.is_empty() {
            st.skip_field("not_values")?;
        } else {
            st.serialize_field("not_values", &not_values)?;
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MatchKind::*;

    const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

    fn sm(kind: MatchKind, v: &[&str]) -> Vec<StrMatch> {
        v.iter().map(|v| StrMatch::new(kind, v)).collect()
    }

    fn cidrs(v: &[&str]) -> Vec<Cidr> {
        v.iter().map(|v| v.parse().unwrap()).collect()
    }

    fn policy(name: &str, action: Action, rules: Vec<Rule>) -> AuthzPolicy {
        AuthzPolicy {
            index: 0,
            name: name.into(),
            action,
            rules,
        }
    }

    fn from(sources: Vec<Source>) -> Rule {
        Rule {
            from: sources,
            ..Rule::default()
        }
    }

    fn to(ops: Vec<Operation>) -> Rule {
        Rule {
            to: ops,
            ..Rule::default()
        }
    }

    fn when(conds: Vec<Condition>) -> Rule {
        Rule {
            when: conds,
            ..Rule::default()
        }
    }

    fn principals(v: &[&str]) -> Source {
        Source {
            principals: Field::new(sm(Principal, v), vec![]),
            ..Source::default()
        }
    }

    fn methods(v: &[&str]) -> Operation {
        Operation {
            methods: Field::new(sm(Header, v), vec![]),
            ..Operation::default()
        }
    }

    fn ports(v: &[u16]) -> Operation {
        Operation {
            ports: Field::new(v.to_vec(), vec![]),
            ..Operation::default()
        }
    }

    fn header(name: &str, v: &[&str], not: &[&str]) -> Condition {
        Condition::RequestHeader {
            name: name.into(),
            field: Field::new(sm(Header, v), sm(Header, not)),
        }
    }

    fn headers(name: &str) -> Option<&'static str> {
        match name {
            "x-user" => Some("alice"),
            "accept" => Some("text/html,*/*"),
            "x-empty" => Some(""),
            _ => None,
        }
    }

    /// A GET from sleep (mTLS) to 10.0.0.2:8080; `tcp()` drops the HTTP part.
    fn http() -> AuthzInput<'static> {
        AuthzInput {
            source_principal: Some(SLEEP),
            source_ip: "10.0.0.1".parse().unwrap(),
            destination_ip: "10.0.0.2".parse().unwrap(),
            destination_port: 8080,
            sni: Some("outbound_.8080_._.reviews.default.svc.cluster.local"),
            http: Some(HttpInput {
                method: "GET",
                path: "/api/v1/items?id=7",
                host: Some("Reviews.Default:8080"),
                headers: &headers,
            }),
        }
    }

    fn tcp() -> AuthzInput<'static> {
        AuthzInput {
            http: None,
            ..http()
        }
    }

    fn plaintext() -> AuthzInput<'static> {
        AuthzInput {
            source_principal: None,
            sni: None,
            ..http()
        }
    }

    /// (allowed, deciding policy, deciding rule, audited policies)
    fn verdict(
        p: &AuthzPolicies,
        input: AuthzInput<'_>,
    ) -> (bool, Option<String>, Option<usize>, Vec<String>) {
        let v = p.evaluate(&input);
        (
            v.allowed,
            v.policy_name().map(String::from),
            v.rule,
            v.audited.iter().map(|p| p.name.clone()).collect(),
        )
    }

    #[test]
    fn string_matchers_as_istio_generates_them() {
        let cases: &[(MatchKind, &str, Option<&str>, bool)] = &[
            // principals: spiffe:// prepended, `*` any non-empty.
            (
                Principal,
                "cluster.local/ns/default/sa/sleep",
                Some(SLEEP),
                true,
            ),
            (
                Principal,
                "cluster.local/ns/default/sa/sleep",
                Some("cluster.local/ns/default/sa/sleep"),
                false,
            ),
            (Principal, "cluster.local/ns/default/*", Some(SLEEP), true),
            (Principal, "cluster.local/ns/other/*", Some(SLEEP), false),
            (Principal, "*/sa/sleep", Some(SLEEP), true),
            (Principal, "*/sa/sleep", Some("http://x/sa/sleep"), false),
            (Principal, "*/sa/sleepy", Some(SLEEP), false),
            (Principal, "*", Some(SLEEP), true),
            (Principal, "*", None, false),
            // namespaces: `/ns/<v>/` inside the principal, `*` anywhere.
            (Namespace, "default", Some(SLEEP), true),
            (Namespace, "defaul", Some(SLEEP), false),
            (Namespace, "def*", Some(SLEEP), true),
            (Namespace, "*ault", Some(SLEEP), true),
            (Namespace, "d*t", Some(SLEEP), true),
            (Namespace, "*", Some(SLEEP), true),
            (Namespace, "default", Some("spiffe://td/ns/default"), false),
            (Namespace, "default", None, false),
            // header matchers (methods, request.headers): case-sensitive, `*` = present.
            (Header, "GET", Some("GET"), true),
            (Header, "GET", Some("get"), false),
            (Header, "*", Some(""), true),
            (Header, "*", None, false),
            (Header, "al*", Some("alice"), true),
            (Header, "*ce", Some("alice"), true),
            (Header, "*/*", Some("text/html,*/*"), true),
            (Header, "*/*", Some("text/html"), false),
            // hosts: case-insensitive, as sent (port included).
            (
                Host,
                "reviews.default:8080",
                Some("Reviews.Default:8080"),
                true,
            ),
            (Host, "reviews.default", Some("reviews.default:8080"), false),
            (Host, "*.default:8080", Some("REVIEWS.DEFAULT:8080"), true),
            (Host, "REVIEWS.*", Some("reviews.default"), true),
            (Host, "*", None, false),
            // paths and SNI: `*` = non-empty.
            (Plain, "/api/*", Some("/api/v1"), true),
            (Plain, "/api/*", Some("/API/v1"), false),
            (Plain, "*.json", Some("/a/b.json"), true),
            (Plain, "/a", Some("/a"), true),
            (Plain, "/a", Some("/a/"), false),
            (Plain, "*", Some(""), false),
            (Plain, "*", Some("x"), true),
            (Plain, "*", None, false),
            // Multi-byte text never splits a character.
            (Host, "*é", Some("ü"), false),
            (Plain, "é*", Some("éa"), true),
        ];
        for (kind, pattern, input, want) in cases {
            let m = StrMatch::new(*kind, pattern);
            assert_eq!(
                m.matches(*input),
                *want,
                "{kind:?} {pattern:?} vs {input:?}"
            );
            assert_eq!(m.as_str(), *pattern);
        }
    }

    #[test]
    fn value_checks() {
        let ok: &[(MatchKind, &str)] = &[
            (Principal, "cluster.local/ns/a/sa/b"),
            (Principal, "*"),
            (Principal, "*/sa/b"),
            (Namespace, "a*b*c"),
            (Header, "*/*"),
            (Plain, "/a/*"),
        ];
        for (k, v) in ok {
            assert_eq!(StrMatch::check(*k, v), Ok(()), "{k:?} {v}");
        }
        let bad: &[(MatchKind, &str, &str)] = &[
            (
                Principal,
                "spiffe://cluster.local/ns/a/sa/b",
                "without `spiffe://`",
            ),
            (Principal, "cluster.local/*/sa/b", "wildcard only"),
            (Plain, "/a/*/b", "wildcard only"),
            (Plain, "*a*", "wildcard only"),
            (Host, "**", "wildcard only"),
            (Header, "", "empty"),
        ];
        for (k, v, want) in bad {
            let e = StrMatch::check(*k, v).unwrap_err();
            assert!(e.contains(want), "{k:?} {v}: {e}");
        }
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.255.0.1", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("10.1.2.3/24", "10.1.2.200", true),
            ("0.0.0.0/0", "1.2.3.4", true),
            ("0.0.0.0/0", "::1", false),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::/0", "::1", true),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
        ];
        for (c, ip, want) in cases {
            let cidr: Cidr = c.parse().unwrap();
            assert_eq!(cidr.contains(ip.parse().unwrap()), *want, "{c} {ip}");
        }
        assert_eq!(
            "10.1.2.3/24".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.0/24"
        );
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0",
            "x",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn no_policy_allows_and_allow_policies_must_match() {
        let none = AuthzPolicies::default();
        assert!(none.is_empty());
        assert_eq!(verdict(&none, http()), (true, None, None, vec![]));
        assert_eq!(verdict(&none, tcp()), (true, None, None, vec![]));

        // Istio: an ALLOW policy without rules allows nothing.
        let allow_nothing = AuthzPolicies::new(vec![policy("nothing", Action::Allow, vec![])]);
        assert_eq!(verdict(&allow_nothing, http()), (false, None, None, vec![]));
        assert_eq!(verdict(&allow_nothing, tcp()), (false, None, None, vec![]));

        // A rule `{}` matches everything.
        let allow_all =
            AuthzPolicies::new(vec![policy("all", Action::Allow, vec![Rule::default()])]);
        assert_eq!(
            verdict(&allow_all, plaintext()),
            (true, Some("all".into()), Some(0), vec![])
        );
        assert_eq!(
            verdict(&allow_all, tcp()),
            (true, Some("all".into()), Some(0), vec![])
        );

        // A DENY without rules matches nothing.
        let deny_nothing = AuthzPolicies::new(vec![policy("d", Action::Deny, vec![])]);
        assert_eq!(verdict(&deny_nothing, http()), (true, None, None, vec![]));

        // Allowed by the second ALLOW policy's second rule.
        let two = AuthzPolicies::new(vec![
            policy(
                "a",
                Action::Allow,
                vec![from(vec![principals(&["x/ns/y/sa/z"])])],
            ),
            policy(
                "b",
                Action::Allow,
                vec![to(vec![ports(&[9090])]), to(vec![ports(&[8080])])],
            ),
        ]);
        assert_eq!(
            verdict(&two, http()),
            (true, Some("b".into()), Some(1), vec![])
        );
        assert_eq!(two.policies()[1].index, 1);
        let elsewhere = AuthzInput {
            destination_port: 7000,
            ..http()
        };
        assert_eq!(verdict(&two, elsewhere), (false, None, None, vec![]));
    }

    #[test]
    fn deny_before_allow_and_audit_never_decides() {
        let p = AuthzPolicies::new(vec![
            policy("audit-all", Action::Audit, vec![Rule::default()]),
            policy("allow-all", Action::Allow, vec![Rule::default()]),
            policy(
                "audit-post",
                Action::Audit,
                vec![to(vec![methods(&["POST"])])],
            ),
            policy("deny-get", Action::Deny, vec![to(vec![methods(&["GET"])])]),
            policy("deny-all", Action::Deny, vec![Rule::default()]),
        ]);
        let idx: Vec<usize> = p.policies().iter().map(|p| p.index).collect();
        assert_eq!(idx, vec![0, 1, 2, 3, 4]);
        // The first matching DENY decides, in file order; audits all reported.
        assert_eq!(
            verdict(&p, http()),
            (
                false,
                Some("deny-get".into()),
                Some(0),
                vec!["audit-all".into()]
            )
        );
        let post = AuthzInput {
            http: Some(HttpInput {
                method: "POST",
                ..http().http.unwrap()
            }),
            ..http()
        };
        assert_eq!(
            verdict(&p, post),
            (
                false,
                Some("deny-all".into()),
                Some(0),
                vec!["audit-all".into(), "audit-post".into()]
            )
        );
        // AUDIT alone: allowed, audited.
        let audit_only =
            AuthzPolicies::new(vec![policy("audit", Action::Audit, vec![Rule::default()])]);
        assert_eq!(
            verdict(&audit_only, http()),
            (true, None, None, vec!["audit".into()])
        );
        // AUDIT beside a failing ALLOW: denied, still audited.
        let audit_deny = AuthzPolicies::new(vec![
            policy("audit", Action::Audit, vec![Rule::default()]),
            policy("nothing", Action::Allow, vec![]),
        ]);
        assert_eq!(
            verdict(&audit_deny, http()),
            (false, None, None, vec!["audit".into()])
        );
    }

    #[test]
    fn sources_or_fields_and_not_forms() {
        let allow = |rules| AuthzPolicies::new(vec![policy("p", Action::Allow, rules)]);
        let ok = |p: &AuthzPolicies, i| p.evaluate(&i).allowed;
        let both = Source {
            principals: Field::new(
                sm(Principal, &["cluster.local/ns/default/sa/sleep"]),
                vec![],
            ),
            ip_blocks: Field::new(cidrs(&["192.168.0.0/16"]), vec![]),
            ..Source::default()
        };
        // Fields of one source AND: the principal matches, the address does not.
        let p = allow(vec![from(vec![both.clone()])]);
        assert!(!ok(&p, http()));
        // Sources OR.
        let p = allow(vec![from(vec![both, principals(&["*"])])]);
        assert!(ok(&p, http()));
        assert!(!ok(&p, plaintext()), "`*` needs a peer certificate");

        let src =
            |p: &[&str], np: &[&str], ns: &[&str], nns: &[&str], ip: &[&str], nip: &[&str]| {
                Source {
                    principals: Field::new(sm(Principal, p), sm(Principal, np)),
                    namespaces: Field::new(sm(Namespace, ns), sm(Namespace, nns)),
                    ip_blocks: Field::new(cidrs(ip), cidrs(nip)),
                }
            };
        let e: &[&str] = &[];
        let cases: Vec<(&str, Source, AuthzInput, bool)> = vec![
            ("namespace", src(e, e, &["default"], e, e, e), http(), true),
            (
                "namespace, plaintext",
                src(e, e, &["default"], e, e, e),
                plaintext(),
                false,
            ),
            (
                "not_namespace hit",
                src(e, e, e, &["default"], e, e),
                http(),
                false,
            ),
            (
                "not_namespace miss",
                src(e, e, e, &["prod"], e, e),
                http(),
                true,
            ),
            // NOT over an absent principal matches (Envoy's not_id).
            (
                "not_namespace, plaintext",
                src(e, e, e, &["default"], e, e),
                plaintext(),
                true,
            ),
            (
                "not_principal, plaintext",
                src(e, &["*"], e, e, e, e),
                plaintext(),
                true,
            ),
            (
                "not_principal hit",
                src(e, &["*/sa/sleep"], e, e, e, e),
                http(),
                false,
            ),
            (
                "principal in list",
                src(
                    &["a/ns/b/sa/c", "cluster.local/ns/default/sa/sleep"],
                    e,
                    e,
                    e,
                    e,
                    e,
                ),
                http(),
                true,
            ),
            (
                "principal and not",
                src(&["cluster.local/*"], &["*/sa/sleep"], e, e, e, e),
                http(),
                false,
            ),
            (
                "ip block",
                src(e, e, e, e, &["10.0.0.0/24"], e),
                plaintext(),
                true,
            ),
            (
                "ip block miss",
                src(e, e, e, e, &["10.0.1.0/24"], e),
                plaintext(),
                false,
            ),
            (
                "not ip block",
                src(e, e, e, e, e, &["10.0.0.1"]),
                plaintext(),
                false,
            ),
            (
                "ip and not ip",
                src(e, e, e, e, &["10.0.0.0/8"], &["10.0.1.0/24"]),
                plaintext(),
                true,
            ),
            (
                "all fields",
                src(
                    &["*"],
                    &["*/sa/admin"],
                    &["def*"],
                    &["kube-system"],
                    &["10.0.0.0/8"],
                    &["10.9.0.0/16"],
                ),
                http(),
                true,
            ),
        ];
        for (what, source, input, want) in cases {
            let p = allow(vec![from(vec![source])]);
            assert_eq!(ok(&p, input), want, "{what}");
        }
    }

    #[test]
    fn operations_and_conditions() {
        let allow = |rules| AuthzPolicies::new(vec![policy("p", Action::Allow, rules)]);
        let op = |ports: &[u16],
                  nports: &[u16],
                  m: &[&str],
                  nm: &[&str],
                  p: &[&str],
                  np: &[&str],
                  h: &[&str],
                  nh: &[&str]| Operation {
            ports: Field::new(ports.to_vec(), nports.to_vec()),
            methods: Field::new(sm(Header, m), sm(Header, nm)),
            paths: Field::new(sm(Plain, p), sm(Plain, np)),
            hosts: Field::new(sm(Host, h), sm(Host, nh)),
        };
        let e: &[&str] = &[];
        let n: &[u16] = &[];
        let cases: Vec<(&str, Operation, bool)> = vec![
            ("port", op(&[8080], n, e, e, e, e, e, e), true),
            ("port miss", op(&[80, 443], n, e, e, e, e, e, e), false),
            ("not port", op(n, &[8080], e, e, e, e, e, e), false),
            ("method", op(n, n, &["GET", "HEAD"], e, e, e, e, e), true),
            ("method case", op(n, n, &["get"], e, e, e, e, e), false),
            ("not method", op(n, n, e, &["POST"], e, e, e, e), true),
            // The query string is not part of the path.
            (
                "path exact",
                op(n, n, e, e, &["/api/v1/items"], e, e, e),
                true,
            ),
            ("path prefix", op(n, n, e, e, &["/api/*"], e, e, e), true),
            ("path suffix", op(n, n, e, e, &["*/items"], e, e, e), true),
            ("path any", op(n, n, e, e, &["*"], e, e, e), true),
            (
                "not path",
                op(n, n, e, e, &["/api/*"], &["/api/v1/*"], e, e),
                false,
            ),
            (
                "host",
                op(n, n, e, e, e, e, &["reviews.default:8080"], e),
                true,
            ),
            (
                "host without port",
                op(n, n, e, e, e, e, &["reviews.default"], e),
                false,
            ),
            (
                "host wildcard",
                op(n, n, e, e, e, e, &["reviews.*"], e),
                true,
            ),
            (
                "not host",
                op(n, n, e, e, e, e, e, &["*.default:8080"]),
                false,
            ),
            (
                "all AND",
                op(
                    &[8080],
                    &[9090],
                    &["GET"],
                    &["POST"],
                    &["/api/*"],
                    &["/admin/*"],
                    &["reviews*"],
                    &["evil*"],
                ),
                true,
            ),
            (
                "one field fails",
                op(&[8080], n, &["GET"], e, &["/other"], e, e, e),
                false,
            ),
        ];
        for (what, operation, want) in cases {
            let p = allow(vec![to(vec![operation])]);
            assert_eq!(p.evaluate(&http()).allowed, want, "{what}");
        }

        let ip = |v: &[&str], nv: &[&str]| Field::new(cidrs(v), cidrs(nv));
        let s = |k: MatchKind, v: &[&str], nv: &[&str]| Field::new(sm(k, v), sm(k, nv));
        let conds: Vec<(&str, Condition, AuthzInput, bool)> = vec![
            ("header", header("x-user", &["alice"], e), http(), true),
            (
                "header prefix",
                header("x-user", &["ali*"], e),
                http(),
                true,
            ),
            ("header absent", header("x-group", &["*"], e), http(), false),
            (
                "header empty present",
                header("x-empty", &["*"], e),
                http(),
                true,
            ),
            (
                "not header absent",
                header("x-group", e, &["admins"]),
                http(),
                true,
            ),
            (
                "not header hit",
                header("x-user", e, &["alice", "bob"]),
                http(),
                false,
            ),
            (
                "source.ip",
                Condition::SourceIp(ip(&["10.0.0.1"], e)),
                http(),
                true,
            ),
            (
                "not source.ip",
                Condition::SourceIp(ip(e, &["10.0.0.0/8"])),
                http(),
                false,
            ),
            (
                "destination.ip",
                Condition::DestinationIp(ip(&["10.0.0.2/32"], e)),
                http(),
                true,
            ),
            (
                "destination.ip miss",
                Condition::DestinationIp(ip(&["10.0.0.3"], e)),
                http(),
                false,
            ),
            (
                "destination.port",
                Condition::DestinationPort(Field::new(vec![8080], vec![])),
                tcp(),
                true,
            ),
            (
                "not destination.port",
                Condition::DestinationPort(Field::new(vec![], vec![8080])),
                tcp(),
                false,
            ),
            (
                "source.namespace",
                Condition::SourceNamespace(s(Namespace, &["default"], e)),
                tcp(),
                true,
            ),
            (
                "source.principal",
                Condition::SourcePrincipal(s(Principal, &["*/sa/sleep"], e)),
                tcp(),
                true,
            ),
            (
                "source.principal plaintext",
                Condition::SourcePrincipal(s(Principal, &["*"], e)),
                plaintext(),
                false,
            ),
            (
                "sni",
                Condition::ConnectionSni(s(Plain, &["outbound_.8080_*"], e)),
                tcp(),
                true,
            ),
            (
                "sni absent",
                Condition::ConnectionSni(s(Plain, &["*"], e)),
                plaintext(),
                false,
            ),
            (
                "not sni absent",
                Condition::ConnectionSni(s(Plain, e, &["*"])),
                plaintext(),
                true,
            ),
        ];
        for (what, cond, input, want) in conds {
            let p = allow(vec![when(vec![cond])]);
            assert_eq!(p.evaluate(&input).allowed, want, "{what}");
        }
        // Conditions AND.
        let p = allow(vec![when(vec![
            header("x-user", &["alice"], e),
            Condition::SourceIp(ip(&["192.168.0.0/16"], e)),
        ])]);
        assert!(!p.evaluate(&http()).allowed);
        // from AND to AND when.
        let rule = Rule {
            from: vec![principals(&["*"])],
            to: vec![methods(&["GET"])],
            when: vec![header("x-user", &["alice"], e)],
        };
        let p = allow(vec![rule.clone()]);
        assert!(p.evaluate(&http()).allowed);
        assert!(!p.evaluate(&plaintext()).allowed);
    }

    /// Istio model.go `checkError`: on TCP an ALLOW rule naming an HTTP-only
    /// attribute is dropped whole, a DENY/AUDIT rule drops only the attribute.
    #[test]
    fn http_only_fields_on_tcp() {
        let e: &[&str] = &[];
        let get_or_8080 = to(vec![ports(&[8080]), methods(&["GET"])]);
        let header_rule = when(vec![header("x-user", &["alice"], e)]);
        let rules = || vec![get_or_8080.clone(), header_rule.clone()];
        let allow = AuthzPolicies::new(vec![policy("p", Action::Allow, rules())]);
        assert!(allow.evaluate(&http()).allowed);
        // The `ports = [8080]` entry would match, but the rule also names a
        // method: skipped whole on TCP.
        assert_eq!(verdict(&allow, tcp()), (false, None, None, vec![]));
        assert!(rules()[0].needs_http() && rules()[1].needs_http());
        assert!(!to(vec![ports(&[8080])]).needs_http());

        // DENY `methods = ["POST"]` alone denies every TCP connection.
        let deny_post = AuthzPolicies::new(vec![policy(
            "no-post",
            Action::Deny,
            vec![to(vec![methods(&["POST"])])],
        )]);
        assert!(deny_post.evaluate(&http()).allowed, "GET is not POST");
        assert_eq!(
            verdict(&deny_post, tcp()),
            (false, Some("no-post".into()), Some(0), vec![])
        );
        // ... but its L4 fields still count.
        let deny_post_9090 = AuthzPolicies::new(vec![policy(
            "no-post",
            Action::Deny,
            vec![to(vec![Operation {
                ports: Field::new(vec![9090], vec![]),
                methods: Field::new(sm(Header, &["POST"]), vec![]),
                ..Operation::default()
            }])],
        )]);
        assert!(deny_post_9090.evaluate(&tcp()).allowed);
        // not_ forms are dropped the same way.
        let deny_not_get = AuthzPolicies::new(vec![policy(
            "d",
            Action::Deny,
            vec![to(vec![Operation {
                methods: Field::new(vec![], sm(Header, &["GET"])),
                ..Operation::default()
            }])],
        )]);
        assert!(deny_not_get.evaluate(&http()).allowed);
        assert!(!deny_not_get.evaluate(&tcp()).allowed);
        // A header condition on a DENY is dropped on TCP; the from still counts.
        let deny_hdr = AuthzPolicies::new(vec![policy(
            "d",
            Action::Deny,
            vec![Rule {
                from: vec![Source {
                    ip_blocks: Field::new(cidrs(&["10.0.0.0/8"]), vec![]),
                    ..Source::default()
                }],
                when: vec![header("x-user", &["mallory"], e)],
                ..Rule::default()
            }],
        )]);
        assert!(deny_hdr.evaluate(&http()).allowed);
        assert!(!deny_hdr.evaluate(&tcp()).allowed);
        let elsewhere = AuthzInput {
            source_ip: "192.168.1.1".parse().unwrap(),
            ..tcp()
        };
        assert!(deny_hdr.evaluate(&elsewhere).allowed);
        // AUDIT widens the same way and still never decides.
        let audit = AuthzPolicies::new(vec![policy(
            "a",
            Action::Audit,
            vec![to(vec![paths_op(&["/audit"])])],
        )]);
        assert_eq!(verdict(&audit, http()), (true, None, None, vec![]));
        assert_eq!(verdict(&audit, tcp()), (true, None, None, vec!["a".into()]));
        // An L4-only ALLOW rule works on TCP.
        let allow_l4 = AuthzPolicies::new(vec![policy(
            "l4",
            Action::Allow,
            vec![to(vec![ports(&[8080])])],
        )]);
        assert_eq!(
            verdict(&allow_l4, tcp()),
            (true, Some("l4".into()), Some(0), vec![])
        );
    }

    fn paths_op(v: &[&str]) -> Operation {
        Operation {
            paths: Field::new(sm(Plain, v), vec![]),
            ..Operation::default()
        }
    }

    #[test]
    fn dump_has_the_file_shape() {
        let p = AuthzPolicies::new(vec![policy(
            "p",
            Action::Deny,
            vec![Rule {
                from: vec![Source {
                    principals: Field::new(vec![], sm(Principal, &["cluster.local/ns/a/sa/b"])),
                    ip_blocks: Field::new(cidrs(&["10.1.2.3/24"]), vec![]),
                    ..Source::default()
                }],
                to: vec![ports(&[80])],
                when: vec![header("x-user", &["alice"], &[])],
            }],
        )]);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "index": 0, "name": "p", "action": "DENY",
                "rules": [{
                    "from": [{ "source": { "not_principals": ["cluster.local/ns/a/sa/b"], "ip_blocks": ["10.1.2.0/24"] } }],
                    "to": [{ "operation": { "ports": ["80"] } }],
                    "when": [{ "key": "request.headers[x-user]", "values": ["alice"] }]
                }]
            }])
        );
    }
}
