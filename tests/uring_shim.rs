//! The COOP_TASKRUN shim must be linked in: if build.rs loses its `--wrap`
//! argument, glommio's rings are created without the flag and every completion
//! costs an inter-processor interrupt (FACTS.md: 36k vs 85k req/s). These tests
//! fail in that case.

mod common;

use common::*;
use remora::net::uring;

#[test]
fn glommio_rings_go_through_the_shim_with_coop_taskrun() {
    let before = uring::ring_counts();
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 * 1024)
        .make()
        .expect("executor");
    ex.run(async {});
    let (coop, plain) = uring::ring_counts();
    // glommio makes a main and a latency ring (interrupt-driven) and an IOPOLL
    // ring; the first two must carry the flag.
    assert!(
        coop >= before.0 + 2,
        "rings were not created through __wrap_io_uring_queue_init_params: coop {coop}, plain {plain}"
    );
}

#[test]
fn the_binary_reports_coop_rings_at_startup() {
    let p = free_port();
    let mut r = Remora::start(
        &l4_config("127.0.0.1:9".parse().unwrap(), &[("c", p, "copy")], ""),
        &["--cores", "1"],
    );
    let line = r.wait_for_log("shards listening");
    let coop: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("coop_taskrun_rings="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ring count in {line:?}"));
    assert!(coop >= 2, "{line}");
    r.stop();
}
