//! The X.509 fields rustls does not expose, read with x509-parser: serial,
//! validity and subject alternative names (the SPIFFE URI SAN above all).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A subject alternative name, as Envoy's `/certs` distinguishes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    Uri(String),
    Dns(String),
    Ip(IpAddr),
}

/// What `/certs`, logs and validation need from one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertDetails {
    /// Lowercase hex without leading zero bytes: Envoy's form (OpenSSL's
    /// `BN_bn2hex`, lowercased), so that both proxies print the same serial.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub sans: Vec<San>,
}

impl CertDetails {
    /// Parses one DER certificate. The error is x509-parser's wording.
    pub fn parse(der: &[u8]) -> Result<CertDetails, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let raw = cert.raw_serial();
        let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
        let mut serial: String = raw[start..].iter().map(|b| format!("{b:02x}")).collect();
        if serial.is_empty() {
            serial.push('0');
        }
        let mut sans = Vec::new();
        // A malformed SAN extension is an error, not "no SANs": a certificate
        // whose identity cannot be read must not pass as one without identity
        // checks downstream.
        let ext = cert.subject_alternative_name().map_err(|e| e.to_string())?;
        if let Some(ext) = ext {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::URI(u) => sans.push(San::Uri((*u).to_string())),
                    GeneralName::DNSName(d) => sans.push(San::Dns((*d).to_string())),
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                            _ => None,
                        };
                        sans.extend(ip.map(San::Ip));
                    }
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Ok(CertDetails {
            serial,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            sans,
        })
    }

    pub fn uris(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().filter_map(|s| match s {
            San::Uri(u) => Some(u.as_str()),
            _ => None,
        })
    }

    /// The first `spiffe://` URI SAN: the workload identity (Istio puts
    /// exactly one; Envoy's `%DOWNSTREAM_PEER_URI_SAN%` also takes the first).
    pub fn first_spiffe_uri(&self) -> Option<&str> {
        self.uris().find(|u| u.starts_with("spiffe://"))
    }

    /// Whole days until `not_after`, 0 once expired (Envoy's
    /// `days_until_expiration`).
    pub fn days_until_expiration(&self, now: i64) -> u64 {
        u64::try_from((self.not_after - now).max(0) / 86_400).unwrap_or(0)
    }
}

/// The first `spiffe://` URI SAN of a DER certificate, if it parses.
pub fn first_spiffe_uri(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let ext = cert.subject_alternative_name().ok()??;
    ext.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_string()),
        _ => None,
    })
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 in UTC (`2024-05-01T12:00:00Z`), the JSON form of a protobuf
/// Timestamp that Envoy's `/certs` prints.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, public domain).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(CertDetails::parse(b"").is_err());
        assert!(CertDetails::parse(&[0x30, 0x82, 0xff, 0xff, 1, 2, 3]).is_err());
        assert_eq!(first_spiffe_uri(b"\x30\x03\x02\x01\x01"), None);
    }

    #[test]
    fn days_until_expiration_floors_and_stops_at_zero() {
        let d = CertDetails {
            serial: "1".into(),
            not_before: 0,
            not_after: 10 * 86_400 + 5,
            sans: vec![],
        };
        assert_eq!(d.days_until_expiration(0), 10);
        assert_eq!(d.days_until_expiration(86_400), 9);
        assert_eq!(d.days_until_expiration(20 * 86_400), 0);
    }
}
