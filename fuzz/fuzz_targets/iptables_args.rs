//! The `remora iptables` flag parser (istio-iptables' flags) on arbitrary
//! argument lists: no panic from any value parser, from the combination checks
//! or from rendering the rule set of whatever is accepted; CIDRs print back to
//! what they parse from.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use remora::intercept::args::{Args, Cidr, CidrSet, Cidrs, Ids, Mode, PortSet, Ports};
use remora::intercept::dry_run;
use remora::intercept::model::Family;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Each flag's value parser alone, on the whole text.
    let _ = text.parse::<Mode>();
    let _ = text.parse::<Ports>();
    let _ = text.parse::<PortSet>();
    let _ = text.parse::<Ids>();
    let _ = text.parse::<Cidrs>();
    let _ = text.parse::<CidrSet>();
    let _ = remora::intercept::args::port(text);
    if let Ok(cidr) = text.parse::<Cidr>() {
        let printed = cidr.to_string();
        let again: Cidr = printed.parse().expect("a printed CIDR parses");
        assert_eq!(again.to_string(), printed);
        let _ = cidr.contains(std::net::Ipv4Addr::new(10, 1, 2, 3).into());
    }
    // The whole command line: NUL separates arguments.
    let argv = std::iter::once("remora-iptables").chain(text.split('\0'));
    let Ok(cli) = Cli::try_parse_from(argv) else {
        return;
    };
    if cli.args.validate().is_ok() {
        let _ = dry_run(&cli.args, &[Family::V4, Family::V6]);
    }
});
