//! `remora iptables`: Istio's init step (istio-iptables) built into the binary.
//!
//! ```text
//! flags (args) ─► build (model: tables/chains/rules per IP family, Istio's order)
//!                   ├─ --dry-run: render::full ─► stdout, nothing changes
//!                   └─ iptables-save (read) ─► render::plan ─► ONE iptables-restore --noflush
//!                                                              per family, then `ip` steps
//!                                                              (::6 on lo, TPROXY routes)
//! ```
//!
//! Re-applying is idempotent (own chains are re-declared, which flushes them;
//! jumps from built-in chains are added only if missing) and `--clean` is the
//! same plan against an empty rule set, so it removes our chains and our jumps
//! and nothing else.

mod apply;
pub mod args;
pub mod model;
pub mod render;

use std::process::ExitCode;

use thiserror::Error;

pub use args::Args;
use args::Mode;
use model::{Family, HostStep, RuleSet};

/// Why `remora iptables` stopped. Nothing is half-applied: each family's rules
/// are one transaction; a failure leaves that family as it was.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("changing the firewall needs CAP_NET_ADMIN: run as root (in Kubernetes, an init container with NET_ADMIN and NET_RAW), or pass --dry-run to only print the rules")]
    NotPermitted,
    #[error("`{binary}` was not found in PATH ({path}): install the Debian package `{package}` (apt-get install -y {package})")]
    MissingBinary {
        binary: &'static str,
        package: &'static str,
        path: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}{}", input.as_ref().map(|i| format!("\n--- its input ---\n{i}")).unwrap_or_default())]
    Failed {
        command: String,
        status: String,
        stderr: String,
        input: Option<String>,
    },
}

/// The subcommand's entry point.
pub fn main(args: Args) -> ExitCode {
    match run(&args) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("remora iptables: {e}");
            ExitCode::from(1)
        }
    }
}

/// Does what the flags ask and returns what to print.
pub fn run(args: &Args) -> Result<String, Error> {
    args.validate().map_err(Error::Invalid)?;
    if args.dry_run {
        let families: &[Family] = if args.no_ipv6 {
            &[Family::V4]
        } else {
            &[Family::V4, Family::V6]
        };
        return Ok(dry_run(args, families));
    }
    if !apply::has_net_admin() {
        return Err(Error::NotPermitted);
    }
    let mut families = vec![Family::V4];
    let mut report = String::new();
    if !args.no_ipv6 {
        if apply::ipv6_available() {
            families.push(Family::V6);
        } else {
            report.push_str("IPv6: not enabled in this network namespace; skipped\n");
        }
    }
    // Every program is found before anything changes.
    let tools = families
        .iter()
        .map(|&f| apply::Tools::find(f).map(|t| (f, t)))
        .collect::<Result<Vec<_>, _>>()?;
    for (family, tools) in &tools {
        let line = if args.clean {
            clean(args, *family, tools)?
        } else {
            install(args, *family, tools)?
        };
        report.push_str(&line);
    }
    Ok(report)
}

/// The rule sets of both modes with these flags: built-in-chain rules of
/// either are recognised as ours (so a mode switch or --clean finds them).
fn both_modes(args: &Args, family: Family) -> [RuleSet; 2] {
    let mut a = args.clone();
    a.mode = Mode::Redirect;
    let redirect = model::build(&a, family);
    a.mode = Mode::Tproxy;
    [redirect, model::build(&a, family)]
}

fn install(args: &Args, family: Family, tools: &apply::Tools) -> Result<String, Error> {
    let desired = model::build(args, family);
    let modes = both_modes(args, family);
    let known = render::builtin_lines(modes.iter().chain([&desired]));
    let current = tools.read()?;
    if let Some(tx) = render::plan(&desired, &current, &known) {
        tools.restore(&tx)?;
    }
    // TPROXY routing from an earlier install in TPROXY mode is not wanted now.
    for stale in modes.iter().flat_map(|m| &m.host) {
        if !desired.host.contains(stale) && *stale != HostStep::PassthroughAddr {
            tools.remove(family, stale)?;
        }
    }
    for step in &desired.host {
        tools.install(family, step)?;
    }
    let n: usize = desired.tables.iter().map(|t| t.rules.len()).sum();
    let tables: Vec<&str> = desired.tables.iter().map(|t| t.table.name()).collect();
    let mut line = format!(
        "{}: installed {n} rules ({})",
        family.name(),
        tables.join(", ")
    );
    for step in &desired.host {
        line.push_str(&format!("; ip {step}"));
    }
    line.push('\n');
    Ok(line)
}

fn clean(args: &Args, family: Family, tools: &apply::Tools) -> Result<String, Error> {
    let modes = both_modes(args, family);
    let known = render::builtin_lines(&modes);
    let current = tools.read()?;
    let mut done = Vec::new();
    if let Some(tx) = render::plan(&RuleSet::empty(family), &current, &known) {
        tools.restore(&tx)?;
        done.push("rules".to_string());
    }
    let mut steps: Vec<&HostStep> = Vec::new();
    for step in modes.iter().flat_map(|m| &m.host) {
        if !steps.contains(&step) {
            steps.push(step);
        }
    }
    for step in steps {
        if tools.remove(family, step)? {
            done.push(step.what());
        }
    }
    Ok(if done.is_empty() {
        format!("{}: nothing to clean\n", family.name())
    } else {
        format!("{}: removed {}\n", family.name(), done.join(", "))
    })
}

/// `--dry-run` output: valid iptables-restore input per family (the `ip`
/// steps as comments), exactly what a clean namespace would get.
pub fn dry_run(args: &Args, families: &[Family]) -> String {
    let mut out = String::from("# remora iptables --dry-run: nothing was changed.\n");
    for &family in families {
        let set = model::build(args, family);
        let (restore, ip) = match family {
            Family::V4 => ("iptables-restore", "ip -4"),
            Family::V6 => ("ip6tables-restore", "ip -6"),
        };
        out.push_str(&format!("# {}: {restore} --noflush\n", family.name()));
        out.push_str(&render::full(&set));
        for step in &set.host {
            out.push_str(&format!("# {}: {ip} {step}\n", family.name()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::BTreeSet;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(argv: &[&str]) -> Args {
        let mut v = vec!["remora-iptables"];
        v.extend_from_slice(argv);
        Cli::try_parse_from(v).unwrap().args
    }

    const BOTH: &[Family] = &[Family::V4, Family::V6];

    /// The goldens were checked rule by rule against istio-iptables' REDIRECT
    /// and TPROXY output (../shared/FACTS.md lists the default order), and the
    /// e2e tests check that iptables-save reads back exactly these lines.
    #[test]
    fn default_rules_are_istios() {
        assert_eq!(
            dry_run(&args(&[]), BOTH),
            include_str!("testdata/default.golden")
        );
    }

    #[test]
    fn tproxy_rules() {
        assert_eq!(
            dry_run(&args(&["-m", "TPROXY"]), BOTH),
            include_str!("testdata/tproxy.golden")
        );
    }

    #[test]
    fn port_uid_and_cidr_flags() {
        let a = args(&[
            "-b",
            "80,443",
            "-d",
            "9090",
            "-i",
            "10.0.0.0/8,fd00::/8",
            "-x",
            "10.96.0.0/12,fd00:96::/64",
            "-o",
            "3306,5432",
            "-q",
            "25",
            "-u",
            "1000,1001",
            "-g",
            "2000",
            "-p",
            "7001",
            "-z",
            "7006",
        ]);
        assert_eq!(dry_run(&a, BOTH), include_str!("testdata/flags.golden"));
    }

    #[test]
    fn empty_include_lists_capture_nothing_but_keep_the_exemptions() {
        let a = args(&["--no-ipv6", "-b", "", "-i", ""]);
        assert_eq!(
            dry_run(&a, &[Family::V4]),
            include_str!("testdata/no-capture-v4.golden")
        );
    }

    #[test]
    fn loopback_in_include_list_keeps_app_to_app_lo_traffic_captured() {
        let set = model::build(&args(&["-i", "127.0.0.0/8"]), Family::V4);
        let text = render::full(&set);
        assert!(!text.contains("! --uid-owner"), "{text}");
        assert!(text.contains("-A ISTIO_OUTPUT -d 127.0.0.0/8 -j ISTIO_REDIRECT"));
    }

    fn saved(text: &str) -> render::Saved {
        render::Saved::parse(text)
    }

    /// What iptables-save would print after restoring `full(set)` on a
    /// namespace whose nat table held `foreign` rules.
    fn installed(set: &RuleSet, foreign: &[&str]) -> render::Saved {
        let mut s = saved(&render::full(set));
        if let Some(nat) = s.tables.iter_mut().find(|t| t.name == "nat") {
            for (i, f) in foreign.iter().enumerate() {
                nat.rules.insert(i, f.to_string());
            }
        }
        s
    }

    fn known(a: &Args) -> BTreeSet<String> {
        render::builtin_lines(&both_modes(a, Family::V4))
    }

    #[test]
    fn first_apply_is_the_full_rule_set() {
        let a = args(&[]);
        let set = model::build(&a, Family::V4);
        let tx = render::plan(&set, &render::Saved::default(), &known(&a)).unwrap();
        assert_eq!(tx, render::full(&set));
    }

    #[test]
    fn reapply_refills_own_chains_and_never_duplicates_jumps() {
        for mode in ["REDIRECT", "TPROXY"] {
            let a = args(&["-m", mode]);
            let set = model::build(&a, Family::V4);
            let now = installed(&set, &["-A OUTPUT -p udp -j ACCEPT"]);
            let tx = render::plan(&set, &now, &known(&a)).unwrap();
            for l in tx.lines() {
                assert!(
                    !l.starts_with("-A PREROUTING")
                        && !l.starts_with("-A OUTPUT")
                        && !l.starts_with("-D")
                        && !l.starts_with("-X"),
                    "{mode}: {l}"
                );
            }
            // Every own chain is re-declared (flushed) and refilled.
            assert!(tx.contains(":ISTIO_OUTPUT - [0:0]\n"));
            assert!(tx.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"));
        }
    }

    #[test]
    fn jumps_out_of_order_or_doubled_are_replaced() {
        let a = args(&[]);
        let set = model::build(&a, Family::V4);
        let mut now = installed(&set, &[]);
        let nat = now.tables.iter_mut().find(|t| t.name == "nat").unwrap();
        nat.rules.push("-A OUTPUT -p tcp -j ISTIO_OUTPUT".into());
        let tx = render::plan(&set, &now, &known(&a)).unwrap();
        assert_eq!(
            tx.matches("-D OUTPUT -p tcp -j ISTIO_OUTPUT\n").count(),
            2,
            "{tx}"
        );
        assert_eq!(tx.matches("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n").count(), 1);
        assert!(!tx.contains("PREROUTING"), "{tx}");
    }

    #[test]
    fn clean_removes_ours_and_keeps_foreign_rules() {
        for mode in ["REDIRECT", "TPROXY"] {
            let a = args(&["-m", mode]);
            let set = model::build(&a, Family::V4);
            let foreign = [
                "-A OUTPUT -p udp -j ACCEPT",
                "-A PREROUTING -p tcp -m tcp --dport 22 -j ACCEPT",
            ];
            let now = installed(&set, &foreign);
            let tx = render::plan(&RuleSet::empty(Family::V4), &now, &known(&a)).unwrap();
            assert!(!tx.contains("udp") && !tx.contains("ACCEPT\n"), "{tx}");
            assert!(!tx.contains("-A "), "clean adds nothing: {tx}");
            for c in model::OWN_CHAINS {
                let declared = render::full(&set).contains(&format!(":{} ", c.name()));
                assert_eq!(tx.contains(&format!("-X {}\n", c.name())), declared, "{tx}");
            }
            // Every built-in rule of ours goes, each exactly once.
            for line in render::builtin_lines([&set]) {
                let del = format!("-D{}\n", &line[2..]);
                assert_eq!(tx.matches(&del).count(), 1, "{mode}: {del} in {tx}");
            }
            // Deletions and flushes come before the chains are removed.
            assert!(tx.find("-D ").unwrap() < tx.find("-X ").unwrap());
        }
        let a = args(&[]);
        assert_eq!(
            render::plan(
                &RuleSet::empty(Family::V4),
                &saved("*nat\n:PREROUTING ACCEPT [0:0]\n-A OUTPUT -p udp -j ACCEPT\nCOMMIT\n"),
                &known(&a)
            ),
            None
        );
    }

    #[test]
    fn switching_mode_removes_the_other_modes_rules() {
        let tproxy = args(&["-m", "TPROXY"]);
        let now = installed(&model::build(&tproxy, Family::V4), &[]);
        let redirect = args(&[]);
        let set = model::build(&redirect, Family::V4);
        let tx = render::plan(&set, &now, &known(&redirect)).unwrap();
        let mangle = &tx[tx.find("*mangle").unwrap()..tx.find("*nat").unwrap()];
        assert!(mangle.contains("-X ISTIO_TPROXY\n"), "{mangle}");
        assert!(mangle.contains("-D OUTPUT -p tcp -m connmark"), "{mangle}");
        assert!(!mangle.contains("-A "), "{mangle}");
        assert!(tx.contains("-A PREROUTING -p tcp -j ISTIO_INBOUND\n"));
    }

    #[test]
    fn saved_parser_reads_iptables_save_output() {
        let s = saved(
            "# Generated by iptables-save v1.8.9\n*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\nCOMMIT\n# Completed\n",
        );
        let nat = s.table("nat").unwrap();
        assert_eq!(nat.chains, vec!["ISTIO_OUTPUT".to_string()]);
        assert_eq!(
            nat.rules,
            vec!["-A OUTPUT -p tcp -j ISTIO_OUTPUT".to_string()]
        );
    }
}
