//! Rule sets → `iptables-restore --noflush` input.
//!
//! [`full`] is the whole rule set as it would be installed on a clean namespace
//! (what `--dry-run` prints). [`plan`] compares a rule set with what
//! `iptables-save` shows now and writes the one transaction that gets there:
//!
//! ```text
//!   :ISTIO_X - [0:0]          declare (or, with --noflush, flush) each own chain we want
//!   -D PREROUTING ...         our jumps that are missing, out of order or no longer wanted
//!   -F / -X ISTIO_Y           own chains we no longer want
//!   -A PREROUTING ...         jumps, unless exactly these are already there
//!   -A ISTIO_X ...            the own chains' rules
//! ```
//!
//! Applying twice gives the same result (own chains are refilled, jumps are not
//! duplicated); [`plan`] against an empty rule set is `--clean`. Rules in
//! built-in chains count as ours only if they jump to an own chain or equal a
//! rule we would install ("known"): everything else is left alone.

use std::collections::BTreeSet;

use super::model::{Chain, RuleSet, Table};

/// One table of `iptables-save` output: its user chains and its rule lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    pub name: String,
    pub chains: Vec<String>,
    /// `-A CHAIN ...` lines, in order.
    pub rules: Vec<String>,
}

/// Parsed `iptables-save` output (comments and counters dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    pub tables: Vec<SavedTable>,
}

impl Saved {
    pub fn parse(text: &str) -> Saved {
        let mut tables: Vec<SavedTable> = Vec::new();
        for line in text.lines().map(str::trim_end) {
            if let Some(name) = line.strip_prefix('*') {
                tables.push(SavedTable {
                    name: name.to_string(),
                    ..Default::default()
                });
            } else if let Some(t) = tables.last_mut() {
                if let Some(decl) = line.strip_prefix(':') {
                    let name = decl.split_whitespace().next().unwrap_or_default();
                    if !is_builtin(name) {
                        t.chains.push(name.to_string());
                    }
                } else if line.starts_with("-A ") {
                    t.rules.push(line.to_string());
                }
            }
        }
        Saved { tables }
    }

    pub fn table(&self, name: &str) -> Option<&SavedTable> {
        self.tables.iter().find(|t| t.name == name)
    }
}

const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

fn is_builtin(chain: &str) -> bool {
    BUILTIN.contains(&chain)
}

/// `-A CHAIN rest` → `CHAIN`.
fn chain_of(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or_default()
}

/// The chain a rule jumps to, if any (`-j NAME`; `-g NAME` too).
fn jump_of(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// The full rule set as iptables-restore input (what a clean namespace gets).
pub fn full(set: &RuleSet) -> String {
    let mut out = String::new();
    for t in &set.tables {
        out.push_str(&format!("*{}\n", t.table.name()));
        let mut chains = t.chains.clone();
        chains.sort();
        for c in chains {
            out.push_str(&format!(":{} - [0:0]\n", c.name()));
        }
        for r in t.ordered() {
            out.push_str(&r.line(set.family));
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The transaction that turns `current` into `desired`, or `None` if there is
/// nothing to write. `known` lists built-in-chain rule lines (`-A ...`) that are
/// ours even though they jump nowhere (TPROXY's MARK/CONNMARK rules).
pub fn plan(desired: &RuleSet, current: &Saved, known: &BTreeSet<String>) -> Option<String> {
    let family = desired.family;
    let mut out = String::new();
    for table in [Table::Mangle, Table::Nat] {
        let want = desired.table(table);
        let have = current.table(table.name());
        let mut lines: Vec<String> = Vec::new();

        let want_chains: Vec<Chain> = want.map(|t| t.chains.clone()).unwrap_or_default();
        let mut sorted = want_chains.clone();
        sorted.sort();
        for c in &sorted {
            lines.push(format!(":{} - [0:0]", c.name()));
        }

        // Built-in chains: keep our rules if they are exactly the wanted ones in
        // the wanted order; otherwise take ours out and put the wanted ones in.
        let empty = Vec::new();
        let have_rules = have.map_or(&empty, |t| &t.rules);
        // In hook order, as iptables-save prints them.
        let builtin_chains = BUILTIN.iter().copied().filter(|c| {
            have_rules.iter().any(|l| chain_of(l) == *c)
                || want.is_some_and(|t| t.rules.iter().any(|r| r.chain.name() == *c))
        });
        let mut deletes = Vec::new();
        let mut appends = Vec::new();
        for chain in builtin_chains {
            let ours_now: Vec<&String> = have_rules
                .iter()
                .filter(|l| chain_of(l) == chain)
                .filter(|l| {
                    known.contains(l.as_str())
                        || jump_of(l).is_some_and(|j| Chain::own_from_name(j).is_some())
                })
                .collect();
            let wanted: Vec<String> = want
                .iter()
                .flat_map(|t| t.ordered())
                .filter(|r| r.chain.name() == chain)
                .map(|r| r.line(family))
                .collect();
            if ours_now
                .iter()
                .map(|s| s.as_str())
                .eq(wanted.iter().map(|s| s.as_str()))
            {
                continue;
            }
            for l in ours_now {
                deletes.push(format!("-D{}", &l[2..]));
            }
            appends.extend(wanted);
        }
        lines.extend(deletes);

        // Own chains that exist but are not wanted (e.g. after a mode change, or --clean).
        let stale: Vec<&String> = have
            .map(|t| t.chains.iter().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| Chain::own_from_name(c).is_some_and(|own| !want_chains.contains(&own)))
            .collect();
        lines.extend(stale.iter().map(|c| format!("-F {c}")));
        lines.extend(stale.iter().map(|c| format!("-X {c}")));

        lines.extend(appends);
        if let Some(t) = want {
            lines.extend(
                t.ordered()
                    .into_iter()
                    .filter(|r| !r.chain.builtin())
                    .map(|r| r.line(family)),
            );
        }
        if !lines.is_empty() {
            out.push_str(&format!("*{}\n", table.name()));
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Every built-in-chain rule line in these rule sets (for `known`).
pub fn builtin_lines<'a>(sets: impl IntoIterator<Item = &'a RuleSet>) -> BTreeSet<String> {
    sets.into_iter()
        .flat_map(|s| {
            s.tables
                .iter()
                .flat_map(|t| t.rules.iter())
                .filter(|r| r.chain.builtin())
                .map(|r| r.line(s.family))
        })
        .collect()
}
