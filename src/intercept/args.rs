//! `remora iptables` flags: istio-iptables' short names and meanings, parsed
//! into typed values (every value is checked here, before anything is changed).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::model::Family;

/// How inbound traffic reaches the inbound capture port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// nat REDIRECT: the destination is rewritten; the proxy asks SO_ORIGINAL_DST.
    Redirect,
    /// mangle TPROXY: no rewrite; the proxy's IP_TRANSPARENT socket accepts for the
    /// original address, which is the accepted socket's local address.
    Tproxy,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.to_ascii_uppercase().as_str() {
            "REDIRECT" => Ok(Mode::Redirect),
            "TPROXY" => Ok(Mode::Tproxy),
            _ => Err("expected REDIRECT or TPROXY".into()),
        }
    }
}

/// A comma-separated port list ("15090,15021"; "" is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports(pub Vec<u16>);

impl FromStr for Ports {
    type Err = String;
    fn from_str(s: &str) -> Result<Ports, String> {
        items(s)
            .map(parse_port)
            .collect::<Result<_, _>>()
            .map(Ports)
    }
}

/// Inbound ports to capture: every port (`*`) or a list ("" captures none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSet {
    All,
    Only(Vec<u16>),
}

impl FromStr for PortSet {
    type Err = String;
    fn from_str(s: &str) -> Result<PortSet, String> {
        if s.trim() == "*" {
            return Ok(PortSet::All);
        }
        s.parse::<Ports>().map(|p| PortSet::Only(p.0))
    }
}

/// A comma-separated list of numeric user or group ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids(pub Vec<u32>);

impl FromStr for Ids {
    type Err = String;
    fn from_str(s: &str) -> Result<Ids, String> {
        let ids: Vec<u32> = items(s)
            .map(|i| {
                i.parse::<u32>()
                    .map_err(|_| format!("`{i}` is not a numeric id (e.g. 1337)"))
            })
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Err("at least one id is needed (e.g. 1337)".into());
        }
        Ok(Ids(ids))
    }
}

/// An address block with its host bits cleared, as iptables-save prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub const fn v4(a: Ipv4Addr, prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(a),
            prefix,
        }
    }

    pub const fn v6(a: Ipv6Addr, prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V6(a),
            prefix,
        }
    }

    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("`{s}` is not an address or CIDR (e.g. 10.0.0.0/8 or fd00::/8)");
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(bad()),
            },
        };
        Ok(match ip {
            IpAddr::V4(a) => Cidr::v4(Ipv4Addr::from(u32::from(a) & mask32(prefix)), prefix),
            IpAddr::V6(a) => Cidr::v6(Ipv6Addr::from(u128::from(a) & mask128(prefix)), prefix),
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A comma-separated CIDR list ("" is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(pub Vec<Cidr>);

impl FromStr for Cidrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidrs, String> {
        items(s)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Cidrs)
    }
}

/// Outbound destinations to capture: everything (`*`) or a list ("" captures none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrSet {
    All,
    Only(Vec<Cidr>),
}

impl FromStr for CidrSet {
    type Err = String;
    fn from_str(s: &str) -> Result<CidrSet, String> {
        if s.trim() == "*" {
            return Ok(CidrSet::All);
        }
        s.parse::<Cidrs>().map(|c| CidrSet::Only(c.0))
    }
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|i| !i.is_empty())
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{s}` is not a port (1-65535)")),
    }
}

/// Port flags need their own parser so that `-p 0` and `-p http` fail the same way.
pub fn port(s: &str) -> Result<u16, String> {
    parse_port(s.trim())
}

/// `remora iptables`: Istio's init step (istio-iptables) built in.
///
/// Installs the transparent-capture rules in the current network namespace
/// in one `iptables-restore --noflush` call per IP family. Defaults equal
/// Istio's sidecar defaults. Flags keep istio-iptables' names and meanings.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Print what would be installed (iptables-restore input, IPv4 and IPv6,
    /// plus the `ip` commands) and change nothing.
    #[arg(short = 'n', long, conflicts_with = "clean")]
    pub dry_run: bool,
    /// Remove what `remora iptables` installs: the ISTIO_* chains, the jumps to
    /// them, the TPROXY marks and policy routes, and the ::6 it added to lo.
    /// Rules anyone else added stay. Pass the same -u/-g/-t/-r as when installing.
    #[arg(long)]
    pub clean: bool,
    /// Port the pod's outbound TCP is redirected to.
    #[arg(short = 'p', long = "envoy-port", default_value = "15001", value_parser = port)]
    pub outbound_port: u16,
    /// Port inbound TCP is redirected (or TPROXY'd) to.
    #[arg(short = 'z', long = "inbound-capture-port", default_value = "15006", value_parser = port)]
    pub inbound_port: u16,
    /// User id(s) of the proxy, comma-separated: their traffic is never captured.
    #[arg(short = 'u', long = "proxy-uid", default_value = "1337")]
    pub proxy_uid: Ids,
    /// Group id(s) of the proxy, comma-separated: their traffic is never captured.
    #[arg(short = 'g', long = "proxy-gid", default_value = "1337")]
    pub proxy_gid: Ids,
    /// Inbound interception mode: REDIRECT or TPROXY (outbound is always REDIRECT).
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        default_value = "REDIRECT"
    )]
    pub mode: Mode,
    /// Inbound ports to capture, comma-separated, or '*' for all ("" for none).
    #[arg(short = 'b', long = "istio-inbound-ports", default_value = "*")]
    pub inbound_ports: PortSet,
    /// Inbound ports not to capture when -b is '*' (15008 and 22 are never captured then).
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        default_value = "15090,15021,15020"
    )]
    pub inbound_exclude: Ports,
    /// Outbound destinations to capture, comma-separated CIDRs, or '*' for all.
    #[arg(short = 'i', long = "istio-service-cidr", default_value = "*")]
    pub outbound_cidrs: CidrSet,
    /// Outbound destinations never captured, comma-separated CIDRs.
    #[arg(short = 'x', long = "istio-service-exclude-cidr", default_value = "")]
    pub outbound_exclude_cidrs: Cidrs,
    /// Outbound destination ports never captured, comma-separated.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = ""
    )]
    pub outbound_exclude_ports: Ports,
    /// Outbound destination ports always captured (even outside -i), comma-separated.
    #[arg(short = 'q', long = "istio-outbound-ports", default_value = "")]
    pub outbound_include_ports: Ports,
    /// TPROXY mode: the packet mark that routes captured packets to lo.
    #[arg(short = 't', long = "inbound-tproxy-mark", default_value = "1337")]
    pub tproxy_mark: u32,
    /// TPROXY mode: the routing table for marked packets (`local default dev lo`).
    #[arg(
        short = 'r',
        long = "inbound-tproxy-route-table",
        default_value = "133"
    )]
    pub tproxy_table: u32,
    /// Leave IPv6 alone (no ip6tables rules, no ::6 on lo).
    #[arg(long)]
    pub no_ipv6: bool,
}

impl Args {
    /// Checks what single flags cannot: combinations.
    pub fn validate(&self) -> Result<(), String> {
        if self.outbound_port == self.inbound_port {
            return Err(format!(
                "-p (outbound capture port) and -z (inbound capture port) are both {}",
                self.outbound_port
            ));
        }
        if self.mode == Mode::Tproxy && (self.tproxy_mark == 0 || self.tproxy_table == 0) {
            return Err("-t (TPROXY mark) and -r (route table) must be non-zero".into());
        }
        if self.mode == Mode::Tproxy && self.tproxy_mark == super::model::OUTBOUND_MARK {
            return Err(format!(
                "-t {} collides with the mark Istio uses for the proxy's own traffic to the app",
                super::model::OUTBOUND_MARK
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, String> {
        let mut v = vec!["remora-iptables"];
        v.extend_from_slice(argv);
        Cli::try_parse_from(v)
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_istios() {
        let a = parse(&[]).unwrap();
        assert_eq!((a.outbound_port, a.inbound_port), (15001, 15006));
        assert_eq!(
            (a.proxy_uid.0.clone(), a.proxy_gid.0.clone()),
            (vec![1337], vec![1337])
        );
        assert_eq!(a.mode, Mode::Redirect);
        assert_eq!(a.inbound_ports, PortSet::All);
        assert_eq!(a.inbound_exclude.0, vec![15090, 15021, 15020]);
        assert_eq!(a.outbound_cidrs, CidrSet::All);
        assert!(a.outbound_exclude_cidrs.0.is_empty());
        assert_eq!((a.tproxy_mark, a.tproxy_table), (1337, 133));
    }

    #[test]
    fn istio_short_flags() {
        let a = parse(&[
            "-p",
            "7001",
            "-z",
            "7006",
            "-u",
            "1000,1001",
            "-g",
            "2000",
            "-m",
            "tproxy",
            "-b",
            "80, 443",
            "-d",
            "",
            "-i",
            "10.1.2.3/8,fd00::1/8",
            "-x",
            "10.96.0.1",
            "-o",
            "3306",
            "-q",
            "80",
        ])
        .unwrap();
        assert_eq!((a.outbound_port, a.inbound_port), (7001, 7006));
        assert_eq!(a.proxy_uid.0, vec![1000, 1001]);
        assert_eq!(a.mode, Mode::Tproxy);
        assert_eq!(a.inbound_ports, PortSet::Only(vec![80, 443]));
        assert!(a.inbound_exclude.0.is_empty());
        assert_eq!(
            a.outbound_cidrs,
            CidrSet::Only(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap()
            ])
        );
        assert_eq!(a.outbound_exclude_cidrs.0[0].to_string(), "10.96.0.1/32");
        assert_eq!(a.outbound_exclude_ports.0, vec![3306]);
        assert_eq!(a.outbound_include_ports.0, vec![80]);
    }

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        for (argv, flag, value) in [
            (&["-p", "http"][..], "--envoy-port", "http"),
            (&["-z", "70000"][..], "--inbound-capture-port", "70000"),
            (&["-b", "80,x"][..], "--istio-inbound-ports", "80,x"),
            (
                &["-m", "NAT"][..],
                "--istio-inbound-interception-mode",
                "NAT",
            ),
            (&["-u", "istio"][..], "--proxy-uid", "istio"),
            (
                &["-x", "10.0.0.0/33"][..],
                "--istio-service-exclude-cidr",
                "10.0.0.0/33",
            ),
            (
                &["-i", "fd00::/129"][..],
                "--istio-service-cidr",
                "fd00::/129",
            ),
            (&["-q", "0"][..], "--istio-outbound-ports", "0"),
        ] {
            let e = parse(argv).unwrap_err();
            assert!(e.contains(flag) && e.contains(value), "{argv:?}: {e}");
        }
        assert!(parse(&["--dry-run", "--clean"]).is_err());
        let same = parse(&["-p", "15006"]).unwrap();
        assert!(same.validate().unwrap_err().contains("both 15006"));
    }

    #[test]
    fn cidr_masks_and_contains() {
        let c: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(c.contains("127.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(
            "fd00:203::7/64".parse::<Cidr>().unwrap().to_string(),
            "fd00:203::/64"
        );
    }
}
