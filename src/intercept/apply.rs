//! Talking to the host: checks before anything changes, one `iptables-save`
//! read and one `iptables-restore --noflush` write per IP family, and the few
//! `ip` commands for ::6 and TPROXY policy routing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::model::{Family, HostStep};
use super::render::Saved;
use super::Error;

/// `CAP_NET_ADMIN` (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// Whether this process may change firewall and routing (effective CAP_NET_ADMIN).
pub fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return nix::unistd::geteuid().is_root();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Whether this network namespace has IPv6 at all.
pub fn ipv6_available() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// Finds `name` in PATH, or says which Debian package provides it.
pub fn find(name: &'static str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::MissingBinary {
        binary: name,
        package: if name == "ip" { "iproute2" } else { "iptables" },
        path: path.to_string_lossy().into_owned(),
    })
}

/// The programs one family needs.
pub struct Tools {
    save: PathBuf,
    restore: PathBuf,
    ip: PathBuf,
}

impl Tools {
    pub fn find(family: Family) -> Result<Tools, Error> {
        let (save, restore) = match family {
            Family::V4 => ("iptables-save", "iptables-restore"),
            Family::V6 => ("ip6tables-save", "ip6tables-restore"),
        };
        Ok(Tools {
            save: find(save)?,
            restore: find(restore)?,
            ip: find("ip")?,
        })
    }

    /// The current rules of every table (one process).
    pub fn read(&self) -> Result<Saved, Error> {
        run(&self.save, &[], None).map(|out| Saved::parse(&out))
    }

    /// Applies one transaction atomically (one process).
    pub fn restore(&self, input: &str) -> Result<(), Error> {
        run(&self.restore, &["--noflush"], Some(input)).map(drop)
    }

    fn ip(&self, family: Family, args: &[&str]) -> Result<String, Error> {
        let mut v = vec![if family == Family::V4 { "-4" } else { "-6" }];
        v.extend_from_slice(args);
        run(&self.ip, &v, None)
    }

    /// Installs one host step; does nothing if it is already in place.
    pub fn install(&self, family: Family, step: &HostStep) -> Result<(), Error> {
        match step {
            HostStep::PassthroughAddr => {
                if !self.has_passthrough_addr(family)?.0 {
                    self.ip(family, &["address", "add", "::6/128", "dev", "lo", "nodad"])?;
                }
            }
            HostStep::MarkRule { mark, table } => {
                if self.mark_rules(family, *mark, *table)? == 0 {
                    let (m, t) = (mark.to_string(), table.to_string());
                    self.ip(family, &["rule", "add", "fwmark", &m, "lookup", &t])?;
                }
            }
            HostStep::LocalRoute { table } => {
                let t = table.to_string();
                self.ip(
                    family,
                    &[
                        "route", "replace", "local", "default", "dev", "lo", "table", &t,
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Removes one host step if it is there (and, for ::6, only if we added it).
    pub fn remove(&self, family: Family, step: &HostStep) -> Result<bool, Error> {
        match step {
            HostStep::PassthroughAddr => {
                let (present, ours) = self.has_passthrough_addr(family)?;
                if present && ours {
                    self.ip(family, &["address", "del", "::6/128", "dev", "lo"])?;
                    return Ok(true);
                }
                Ok(false)
            }
            HostStep::MarkRule { mark, table } => {
                let n = self.mark_rules(family, *mark, *table)?;
                let (m, t) = (mark.to_string(), table.to_string());
                for _ in 0..n {
                    self.ip(family, &["rule", "del", "fwmark", &m, "lookup", &t])?;
                }
                Ok(n > 0)
            }
            HostStep::LocalRoute { table } => {
                let t = table.to_string();
                let routes = match self.ip(family, &["route", "show", "table", &t]) {
                    Ok(r) => r,
                    // IPv4 reports a table that was never used as an error.
                    Err(Error::Failed { stderr, .. }) if stderr.contains("does not exist") => {
                        String::new()
                    }
                    Err(e) => return Err(e),
                };
                if routes
                    .lines()
                    .any(|l| l.starts_with("local default dev lo"))
                {
                    self.ip(
                        family,
                        &["route", "del", "local", "default", "dev", "lo", "table", &t],
                    )?;
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    /// `(present, added by us)`: ours carries the `nodad` flag (see `HostStep`).
    fn has_passthrough_addr(&self, family: Family) -> Result<(bool, bool), Error> {
        let out = self.ip(family, &["-o", "address", "show", "dev", "lo"])?;
        let line = out.lines().find(|l| l.contains(" ::6/128 "));
        Ok((line.is_some(), line.is_some_and(|l| l.contains(" nodad"))))
    }

    fn mark_rules(&self, family: Family, mark: u32, table: u32) -> Result<usize, Error> {
        let out = self.ip(family, &["rule", "show"])?;
        let want = format!("fwmark {mark:#x} lookup {table}");
        Ok(out
            .lines()
            .filter(|l| l.trim_end().ends_with(&want))
            .count())
    }
}

fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let shown = || {
        std::iter::once(program.display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: shown(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows up as the program's own error below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        command: shown(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: shown(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            input: stdin.map(str::to_string),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
