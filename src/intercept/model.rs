//! The capture rule set as data: tables, chains and rules for one IP family,
//! built from the flags by [`build`] in exactly Istio's order, plus the host
//! changes that go with them (::6 on lo, TPROXY policy routing).
//!
//! A [`Rule`] renders itself in the canonical form `iptables-save` prints (option
//! order, `-m tcp` before `--dport`, marks in hex), so what we install is
//! byte-for-byte what we later read back: that is how re-applying finds the jumps
//! it already added, and how `--clean` finds exactly its own rules.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::args::{Args, Cidr, CidrSet, Mode, PortSet};

/// Istio's HBONE tunnel port: never captured inbound.
pub const TUNNEL_PORT: u16 = 15008;
/// SSH: Istio leaves it alone when capturing every inbound port.
pub const SSH_PORT: u16 = 22;
/// The mark Istio puts on the proxy's own packets to the app in TPROXY mode,
/// so that they are not TPROXY'd back to the proxy (istio-iptables hard-codes it).
pub const OUTBOUND_MARK: u32 = 1338;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn loopback(self) -> Cidr {
        match self {
            Family::V4 => Cidr::v4(Ipv4Addr::LOCALHOST, 32),
            Family::V6 => Cidr::v6(Ipv6Addr::LOCALHOST, 128),
        }
    }

    /// The source the proxy uses towards the app (inbound passthrough), never captured.
    pub fn passthrough(self) -> Cidr {
        match self {
            Family::V4 => Cidr::v4(Ipv4Addr::new(127, 0, 0, 6), 32),
            Family::V6 => Cidr::v6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6), 128),
        }
    }

    fn any(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0",
            Family::V6 => "::",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// The tables we write to, in the order iptables-save prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Mangle,
    Nat,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Mangle => "mangle",
            Table::Nat => "nat",
        }
    }

    pub fn from_name(s: &str) -> Option<Table> {
        match s {
            "mangle" => Some(Table::Mangle),
            "nat" => Some(Table::Nat),
            _ => None,
        }
    }
}

/// Built-in hooks we add jumps to, then Istio's own chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    // Built-in chains, in iptables-save order.
    Prerouting,
    Output,
    // Own chains in iptables-save order (byte order: `ISTIO_INB` < `ISTIO_IN_`).
    IstioDivert,
    IstioInbound,
    IstioInRedirect,
    IstioOutput,
    IstioRedirect,
    IstioTproxy,
}

/// Every chain `remora iptables` may create, in any table. `--clean` removes
/// these (and only these) chains, and any built-in rule that jumps to one.
pub const OWN_CHAINS: [Chain; 6] = [
    Chain::IstioDivert,
    Chain::IstioInbound,
    Chain::IstioInRedirect,
    Chain::IstioOutput,
    Chain::IstioRedirect,
    Chain::IstioTproxy,
];

impl Chain {
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::IstioDivert => "ISTIO_DIVERT",
            Chain::IstioInRedirect => "ISTIO_IN_REDIRECT",
            Chain::IstioInbound => "ISTIO_INBOUND",
            Chain::IstioOutput => "ISTIO_OUTPUT",
            Chain::IstioRedirect => "ISTIO_REDIRECT",
            Chain::IstioTproxy => "ISTIO_TPROXY",
        }
    }

    pub fn builtin(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output)
    }

    pub fn own_from_name(s: &str) -> Option<Chain> {
        OWN_CHAINS.into_iter().find(|c| c.name() == s)
    }
}

/// One `-m` match, rendered in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `-m tcp --dport P` (needs `tcp: true`).
    Dport(u16),
    /// `-m mark [!] --mark M`.
    Mark { negate: bool, mark: u32 },
    /// `-m owner [!] --uid-owner U`.
    Uid { negate: bool, uid: u32 },
    /// `-m owner [!] --gid-owner G`.
    Gid { negate: bool, gid: u32 },
    /// `-m connmark --mark M`.
    Connmark(u32),
    /// `-m conntrack --ctstate RELATED,ESTABLISHED`.
    Established,
}

/// What a rule does with a matching packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Jump(Chain),
    Return,
    Accept,
    /// nat: `REDIRECT --to-ports P`.
    Redirect(u16),
    /// mangle: `TPROXY --on-port P --on-ip ANY --tproxy-mark M/0xffffffff`.
    Tproxy {
        port: u16,
        mark: u32,
    },
    /// mangle: `MARK --set-xmark M/0xffffffff` (what `--set-mark M` is saved as).
    SetMark(u32),
    /// mangle: `CONNMARK --save-mark`.
    SaveMark,
    /// mangle: `CONNMARK --restore-mark`.
    RestoreMark,
}

/// One rule in one chain. Fields are the iptables options in iptables-save order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub src: Option<Cidr>,
    /// `(negated, cidr)`.
    pub dst: Option<(bool, Cidr)>,
    pub in_lo: bool,
    pub out_lo: bool,
    pub tcp: bool,
    pub matches: Vec<Match>,
    pub action: Action,
}

impl Rule {
    fn new(chain: Chain, action: Action) -> Rule {
        Rule {
            chain,
            src: None,
            dst: None,
            in_lo: false,
            out_lo: false,
            tcp: false,
            matches: Vec::new(),
            action,
        }
    }
    fn tcp(mut self) -> Rule {
        self.tcp = true;
        self
    }
    fn src(mut self, c: Cidr) -> Rule {
        self.src = Some(c);
        self
    }
    fn dst(mut self, c: Cidr) -> Rule {
        self.dst = Some((false, c));
        self
    }
    fn not_dst(mut self, c: Cidr) -> Rule {
        self.dst = Some((true, c));
        self
    }
    fn in_lo(mut self) -> Rule {
        self.in_lo = true;
        self
    }
    fn out_lo(mut self) -> Rule {
        self.out_lo = true;
        self
    }
    fn m(mut self, m: Match) -> Rule {
        self.matches.push(m);
        self
    }
    fn dport(self, p: u16) -> Rule {
        self.tcp().m(Match::Dport(p))
    }

    /// The rule as `-A CHAIN ...`, exactly as iptables-save prints it.
    pub fn line(&self, family: Family) -> String {
        format!("-A {} {}", self.chain.name(), self.spec(family))
    }

    fn spec(&self, family: Family) -> String {
        let mut o: Vec<String> = Vec::new();
        if let Some(s) = self.src {
            o.push(format!("-s {s}"));
        }
        if let Some((neg, d)) = self.dst {
            o.push(format!("{}-d {d}", if neg { "! " } else { "" }));
        }
        if self.in_lo {
            o.push("-i lo".into());
        }
        if self.out_lo {
            o.push("-o lo".into());
        }
        if self.tcp {
            o.push("-p tcp".into());
        }
        let not = |n: bool| if n { "! " } else { "" };
        for m in &self.matches {
            o.push(match m {
                Match::Dport(p) => format!("-m tcp --dport {p}"),
                Match::Mark { negate, mark } => format!("-m mark {}--mark {mark:#x}", not(*negate)),
                Match::Uid { negate, uid } => format!("-m owner {}--uid-owner {uid}", not(*negate)),
                Match::Gid { negate, gid } => format!("-m owner {}--gid-owner {gid}", not(*negate)),
                Match::Connmark(mark) => format!("-m connmark --mark {mark:#x}"),
                Match::Established => "-m conntrack --ctstate RELATED,ESTABLISHED".into(),
            });
        }
        o.push(match &self.action {
            Action::Jump(c) => format!("-j {}", c.name()),
            Action::Return => "-j RETURN".into(),
            Action::Accept => "-j ACCEPT".into(),
            Action::Redirect(p) => format!("-j REDIRECT --to-ports {p}"),
            Action::Tproxy { port, mark } => format!(
                "-j TPROXY --on-port {port} --on-ip {} --tproxy-mark {mark:#x}/0xffffffff",
                family.any()
            ),
            Action::SetMark(m) => format!("-j MARK --set-xmark {m:#x}/0xffffffff"),
            Action::SaveMark => {
                "-j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff".into()
            }
            Action::RestoreMark => {
                "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff".into()
            }
        });
        o.join(" ")
    }
}

/// The rules of one table: the own chains it declares and every rule, each
/// chain's rules in evaluation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRules {
    pub table: Table,
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
}

impl TableRules {
    fn new(table: Table) -> TableRules {
        TableRules {
            table,
            chains: Vec::new(),
            rules: Vec::new(),
        }
    }

    fn push(&mut self, r: Rule) {
        if !r.chain.builtin() && !self.chains.contains(&r.chain) {
            self.chains.push(r.chain);
        }
        self.rules.push(r);
    }

    /// Rules grouped by chain (built-in chains first, then own chains
    /// alphabetically), keeping each chain's order: iptables-save's layout.
    pub fn ordered(&self) -> Vec<&Rule> {
        let mut v: Vec<&Rule> = self.rules.iter().collect();
        v.sort_by_key(|r| r.chain); // stable: per-chain order is kept
        v
    }
}

/// Host changes outside iptables that the rule set relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostStep {
    /// `ip -6 address add ::6/128 dev lo nodad`: the inbound passthrough source
    /// must exist before the proxy can bind it (FACTS.md). `nodad` means nothing
    /// on lo (no duplicate detection there) and marks the address as ours, so
    /// `--clean` removes it only if we added it.
    PassthroughAddr,
    /// `ip rule add fwmark MARK lookup TABLE`.
    MarkRule { mark: u32, table: u32 },
    /// `ip route replace local default dev lo table TABLE`.
    LocalRoute { table: u32 },
}

/// Everything for one IP family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub family: Family,
    pub tables: Vec<TableRules>,
    pub host: Vec<HostStep>,
}

impl RuleSet {
    pub fn empty(family: Family) -> RuleSet {
        RuleSet {
            family,
            tables: Vec::new(),
            host: Vec::new(),
        }
    }

    pub fn table(&self, t: Table) -> Option<&TableRules> {
        self.tables.iter().find(|x| x.table == t)
    }
}

/// Builds Istio's rule set for one family. The order of every `push` below is
/// istio-iptables' order (tools/istio-iptables/pkg/capture/run.go).
pub fn build(a: &Args, family: Family) -> RuleSet {
    let lo = family.loopback();
    let pass = family.passthrough();
    let mut nat = TableRules::new(Table::Nat);
    let mut mangle = TableRules::new(Table::Mangle);
    let mut host = Vec::new();
    let tproxy = a.mode == Mode::Tproxy;

    let in_table = if tproxy { &mut mangle } else { &mut nat };
    let inbound = !matches!(&a.inbound_ports, PortSet::Only(p) if p.is_empty());
    if inbound {
        if tproxy {
            // Captured packets carry the mark; the policy route sends them to lo.
            in_table.push(Rule::new(
                Chain::IstioDivert,
                Action::SetMark(a.tproxy_mark),
            ));
            in_table.push(Rule::new(Chain::IstioDivert, Action::Accept));
            in_table.push(
                Rule::new(
                    Chain::IstioTproxy,
                    Action::Tproxy {
                        port: a.inbound_port,
                        mark: a.tproxy_mark,
                    },
                )
                .not_dst(lo)
                .tcp(),
            );
            in_table.push(Rule::new(Chain::Prerouting, Action::Jump(Chain::IstioInbound)).tcp());
            // Never TPROXY: packets the proxy marked itself, the proxy's
            // passthrough connections to the app, and the pod talking to itself on lo.
            in_table.push(
                Rule::new(Chain::IstioInbound, Action::Return)
                    .tcp()
                    .m(Match::Mark {
                        negate: false,
                        mark: a.tproxy_mark,
                    }),
            );
            in_table.push(
                Rule::new(Chain::IstioInbound, Action::Return)
                    .src(pass)
                    .in_lo()
                    .tcp(),
            );
            in_table.push(
                Rule::new(Chain::IstioInbound, Action::Return)
                    .in_lo()
                    .tcp()
                    .m(Match::Mark {
                        negate: true,
                        mark: OUTBOUND_MARK,
                    }),
            );
        } else {
            in_table.push(Rule::new(Chain::Prerouting, Action::Jump(Chain::IstioInbound)).tcp());
        }
        in_table.push(Rule::new(Chain::IstioInbound, Action::Return).dport(TUNNEL_PORT));
        match &a.inbound_ports {
            PortSet::All => {
                in_table.push(Rule::new(Chain::IstioInbound, Action::Return).dport(SSH_PORT));
                for &p in &a.inbound_exclude.0 {
                    in_table.push(Rule::new(Chain::IstioInbound, Action::Return).dport(p));
                }
                if tproxy {
                    in_table.push(
                        Rule::new(Chain::IstioInbound, Action::Jump(Chain::IstioDivert))
                            .tcp()
                            .m(Match::Established),
                    );
                    in_table.push(
                        Rule::new(Chain::IstioInbound, Action::Jump(Chain::IstioTproxy)).tcp(),
                    );
                } else {
                    in_table.push(
                        Rule::new(Chain::IstioInbound, Action::Jump(Chain::IstioInRedirect)).tcp(),
                    );
                }
            }
            PortSet::Only(ports) => {
                for &p in ports {
                    if tproxy {
                        in_table.push(
                            Rule::new(Chain::IstioInbound, Action::Jump(Chain::IstioDivert))
                                .dport(p)
                                .m(Match::Established),
                        );
                        in_table.push(
                            Rule::new(Chain::IstioInbound, Action::Jump(Chain::IstioTproxy))
                                .dport(p),
                        );
                    } else {
                        in_table.push(
                            Rule::new(Chain::IstioInbound, Action::Jump(Chain::IstioInRedirect))
                                .dport(p),
                        );
                    }
                }
            }
        }
    }
    if tproxy {
        // The app's replies on connections the proxy marked go back to the proxy
        // (Istio's original-source path); the proxy's packets to the app get
        // OUTBOUND_MARK so ISTIO_INBOUND lets them through.
        mangle.push(
            Rule::new(Chain::Prerouting, Action::SaveMark)
                .tcp()
                .m(Match::Mark {
                    negate: false,
                    mark: a.tproxy_mark,
                }),
        );
        mangle.push(
            Rule::new(Chain::Output, Action::Return)
                .out_lo()
                .tcp()
                .m(Match::Mark {
                    negate: false,
                    mark: a.tproxy_mark,
                }),
        );
        for &uid in &a.proxy_uid.0 {
            mangle.push(
                Rule::new(Chain::Output, Action::SetMark(OUTBOUND_MARK))
                    .not_dst(lo)
                    .out_lo()
                    .tcp()
                    .m(Match::Uid { negate: false, uid }),
            );
        }
        for &gid in &a.proxy_gid.0 {
            mangle.push(
                Rule::new(Chain::Output, Action::SetMark(OUTBOUND_MARK))
                    .not_dst(lo)
                    .out_lo()
                    .tcp()
                    .m(Match::Gid { negate: false, gid }),
            );
        }
        mangle.push(
            Rule::new(Chain::Output, Action::RestoreMark)
                .tcp()
                .m(Match::Connmark(a.tproxy_mark)),
        );
        host.push(HostStep::MarkRule {
            mark: a.tproxy_mark,
            table: a.tproxy_table,
        });
        host.push(HostStep::LocalRoute {
            table: a.tproxy_table,
        });
    }

    // nat: the two REDIRECT chains, then outbound.
    nat.push(Rule::new(Chain::IstioRedirect, Action::Redirect(a.outbound_port)).tcp());
    nat.push(Rule::new(Chain::IstioInRedirect, Action::Redirect(a.inbound_port)).tcp());
    nat.push(Rule::new(Chain::Output, Action::Jump(Chain::IstioOutput)).tcp());
    let out = Chain::IstioOutput;
    for &p in &a.outbound_exclude_ports.0 {
        nat.push(Rule::new(out, Action::Return).dport(p));
    }
    // The proxy's inbound passthrough connections to the app.
    nat.push(Rule::new(out, Action::Return).src(pass).out_lo());
    let include: Vec<Cidr> = match &a.outbound_cidrs {
        CidrSet::All => Vec::new(),
        CidrSet::Only(c) => c.iter().filter(|c| c.family() == family).copied().collect(),
    };
    let lo_ip: IpAddr = lo.addr;
    let include_has_loopback = include.iter().any(|c| c.contains(lo_ip));
    let owners: Vec<Match> = a
        .proxy_uid
        .0
        .iter()
        .map(|&uid| Match::Uid { negate: false, uid })
        .chain(
            a.proxy_gid
                .0
                .iter()
                .map(|&gid| Match::Gid { negate: false, gid }),
        )
        .collect();
    for owner in owners {
        let negated = match owner {
            Match::Uid { uid, .. } => Match::Uid { negate: true, uid },
            Match::Gid { gid, .. } => Match::Gid { negate: true, gid },
            ref other => other.clone(),
        };
        // The proxy calling the pod's own IP (app → VIP → this pod): inbound capture.
        nat.push(
            Rule::new(out, Action::Jump(Chain::IstioInRedirect))
                .not_dst(lo)
                .out_lo()
                .m(owner.clone()),
        );
        // The app calling itself on lo: not captured.
        if !include_has_loopback {
            nat.push(Rule::new(out, Action::Return).out_lo().m(negated));
        }
        // Everything else the proxy sends: never captured (no loop).
        nat.push(Rule::new(out, Action::Return).m(owner));
    }
    nat.push(Rule::new(out, Action::Return).dst(lo));
    for c in a
        .outbound_exclude_cidrs
        .0
        .iter()
        .filter(|c| c.family() == family)
    {
        nat.push(Rule::new(out, Action::Return).dst(*c));
    }
    for &p in &a.outbound_include_ports.0 {
        nat.push(Rule::new(out, Action::Jump(Chain::IstioRedirect)).dport(p));
    }
    match &a.outbound_cidrs {
        CidrSet::All => nat.push(Rule::new(out, Action::Jump(Chain::IstioRedirect))),
        CidrSet::Only(_) if include.is_empty() => {}
        CidrSet::Only(_) => {
            for c in include {
                nat.push(Rule::new(out, Action::Jump(Chain::IstioRedirect)).dst(c));
            }
            nat.push(Rule::new(out, Action::Return));
        }
    }

    if family == Family::V6 {
        host.insert(0, HostStep::PassthroughAddr);
    }
    let mut tables = Vec::new();
    if !mangle.rules.is_empty() {
        tables.push(mangle);
    }
    tables.push(nat);
    RuleSet {
        family,
        tables,
        host,
    }
}

impl fmt::Display for HostStep {
    /// The `ip` arguments that install this step (for --dry-run and errors).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostStep::PassthroughAddr => write!(f, "address add ::6/128 dev lo nodad"),
            HostStep::MarkRule { mark, table } => {
                write!(f, "rule add fwmark {mark} lookup {table}")
            }
            HostStep::LocalRoute { table } => {
                write!(f, "route replace local default dev lo table {table}")
            }
        }
    }
}

impl HostStep {
    /// What `--clean` reports when it removes this step.
    pub fn what(&self) -> String {
        match self {
            HostStep::PassthroughAddr => "::6/128 on lo".into(),
            HostStep::MarkRule { mark, table } => format!("ip rule fwmark {mark} lookup {table}"),
            HostStep::LocalRoute { table } => format!("local default route in table {table}"),
        }
    }
}
