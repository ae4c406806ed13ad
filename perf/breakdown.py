"""perf/breakdown: where each proxy's CPU time per request goes.

Same rig as perf/compare (harness.py): nginx backend and wrk on the load CPU, each proxy
started fresh and pinned on the proxy CPU, `wrk -t1 -c50` keep-alive to /small. During
the measured wrk run, for all the proxy's processes and threads:

  (a) CPU µs/request from /proc (utime+stime, as perf/compare does);
  (b) `perf stat` on syscall-entry tracepoints (and io_uring's submit tracepoint):
      calls per request;
  (c) `perf record -e cpu-clock -g --kernel-callchains`, read back with `perf script`:
      every sample is put in exactly one category by its kernel call chain, and each
      category's share of the samples is multiplied by (a).

Categories (see classify()): send, recv (socket transfer, including the syscall around
it and, for send, the loopback delivery into the peer that runs in the sender's
softirq), loop (epoll/io_uring_enter/membarrier and io_uring task work), other kernel,
user, and probe (the cost of the tracepoints themselves, so that it pollutes nothing
else). perf stat and perf record are started disabled and switched on and off through
their --control descriptors right around the wrk run, so the window is the run's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import (CLK_TCK, PROXIES, REPO, RESULTS_DIR, SCENARIOS, HarnessError, Rig,
                     SetupError, cpu_model, cpu_ticks, fmt, is_competitor, is_remora,
                     loadavg, log, run_wrk, validate_wrk)

DEFAULT_PROXIES = ["remora-copy", "remora-splice", "nginx-stream", "haproxy-tcp",
                   "remora-l7", "nginx-http", "haproxy-http"]
QUICK_PROXIES = ["remora-copy", "nginx-stream"]

# Syscalls counted with syscalls:sys_enter_* tracepoints. The first line is what the
# proxies are expected to use; the second what showed up in their profiles on this
# machine besides (haproxy's clock_gettime(CLOCK_THREAD_CPUTIME_ID), nginx http's
# getsockopt, Remora's pipe write in splice mode). Opening a wildcard
# (syscalls:sys_enter_*, ~370 events) takes perf ~15 s, so the list is explicit; the
# profile names every syscall that takes time anyway (per_syscall in the JSON).
SYSCALLS = ["io_uring_enter", "recvfrom", "sendto", "sendmsg", "recvmsg", "read", "write",
            "readv", "writev", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl",
            "splice", "membarrier", "accept4", "close",
            "clock_gettime", "getsockopt", "setsockopt", "connect", "shutdown", "futex",
            "socket", "pipe2"]
URING_SUBMIT = ["io_uring:io_uring_submit_req", "io_uring:io_uring_submit_sqe"]  # new, old name

CATEGORIES = ["send", "recv", "loop", "other_kernel", "user", "probe"]


# ───────────────────────────── classifying samples ─────────────────────────────

KERNEL_MIN = 0xffff800000000000  # x86-64: kernel addresses live in the upper half

# The frame do_syscall_64 calls is the syscall's handler; its name varies with inlining
# (__x64_sys_sendto, __do_sys_io_uring_enter, ksys_write, do_writev, ...).
_HANDLER = re.compile(r"^(?:__x64_sys_|__ia32_sys_|__do_sys_|__se_sys_|__sys_|ksys_|do_)(\w+)$")
SYSCALL_DISPATCH = {"x64_sys_call", "do_syscall_x64"}
_ENTRY = re.compile(r"^(?:__x64_sys_|__ia32_sys_|__do_sys_|__se_sys_)(\w+)$")  # for nesting()

# Frames that exist only because of our own tracepoints (syscall slow path, perf's
# tracepoint handlers, io_uring's submit tracepoint).
PROBE_FRAMES = {"syscall_trace_enter", "syscall_exit_work", "perf_syscall_enter",
                "perf_syscall_exit", "perf_tp_event", "perf_trace_buf_alloc",
                "perf_trace_buf_update", "trace_event_buffer_reserve"}

SEND_SYSCALLS = {"sendto", "sendmsg", "sendmmsg"}
RECV_SYSCALLS = {"recvfrom", "recvmsg", "recvmmsg"}
LOOP_SYSCALLS = {"io_uring_enter", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl",
                 "membarrier", "poll", "ppoll", "select", "pselect6"}
# Socket transfer, whichever way it was entered: plain syscalls, read/write/readv/writev
# on a socket (sock_*_iter), splice to or from a socket, io_uring send/recv ops.
SEND_FRAMES = {"__sys_sendto", "__sys_sendmsg", "__sys_sendmmsg", "sock_sendmsg",
               "sock_write_iter", "tcp_sendmsg", "splice_to_socket", "io_send", "io_sendmsg",
               "io_send_zc", "io_sendmsg_zc"}
RECV_FRAMES = {"__sys_recvfrom", "__sys_recvmsg", "__sys_recvmmsg", "sock_recvmsg",
               "sock_read_iter", "tcp_recvmsg", "sock_splice_read", "tcp_splice_read",
               "splice_file_to_pipe", "io_recv", "io_recvmsg"}
# io_uring completions run as task work, inside io_uring_enter or on the way back to
# user space from any syscall or interrupt: event-loop work too. They are signalled
# with TIF_NOTIFY_SIGNAL, so that way back goes arch_do_signal_or_restart → get_signal
# → task_work_run → tctx_task_work; samples in the first three (no real signal is
# delivered during these runs) are io_uring's as well. eventfd is a wake-up channel.
LOOP_FRAMES = {"tctx_task_work", "tctx_task_work_run", "io_run_task_work",
               "arch_do_signal_or_restart", "eventfd_read", "eventfd_write"}
# read/write/readv/writev samples outside sock_*_iter (fd lookup, iovec import) belong
# to whatever the calls were for: they are shared out like that syscall's other samples.
RW_SYSCALLS = {"read", "write", "readv", "writev", "pread64", "pwrite64"}


def classify(frames: list[tuple[int, str]]) -> tuple[str, str | None]:
    """(category, syscall) of one sample; frames run from the leaf to the root.

    Categories are exclusive by construction: one sample, one category. Transfer wins
    over the event loop: an io_uring send op inside io_uring_enter is "send". The
    direction is the transfer frame nearest the root, i.e. what the syscall was called
    for: the loopback delivery to the peer (softirq under a send) stays "send", and
    the ACK a recv sends back stays "recv". A sample in splice(2) outside both
    directions' code (fd lookup, pipe checks) is "splice_other", one in read/write/
    readv/writev outside socket and pipe code is "rw_other" (both shared out later).
    Checked on full profiles of all seven proxies on the development VM, and counted
    on every run (nesting(), `checks` in the JSON): no sample had frames of both
    directions, none had a transfer inside an event-loop syscall (these proxies do
    their socket I/O with plain syscalls; io_uring only polls, times out and cancels),
    and no syscall handler was nested in another.
    """
    if not frames or frames[0][0] < KERNEL_MIN:
        return "user", None
    names = [sym for addr, sym in frames if addr >= KERNEL_MIN]
    if any(n in PROBE_FRAMES or n.startswith("perf_trace_") for n in names):
        return "probe", None
    syscall = None
    if "do_syscall_64" in names:
        i = names.index("do_syscall_64") - 1
        while i >= 0 and names[i] in SYSCALL_DISPATCH:
            i -= 1
        if i >= 0:
            m = _HANDLER.match(names[i])
            syscall = m.group(1) if m else None
    if syscall in SEND_SYSCALLS:
        return "send", syscall
    if syscall in RECV_SYSCALLS:
        return "recv", syscall
    for n in reversed(names):  # from the root
        if n in SEND_FRAMES:
            return "send", syscall
        if n in RECV_FRAMES:
            return "recv", syscall
    if syscall == "splice":
        return "splice_other", syscall
    if syscall in LOOP_SYSCALLS or any(n in LOOP_FRAMES for n in names):
        return "loop", syscall
    if syscall in RW_SYSCALLS and not any("pipe" in n for n in names):
        return "rw_other", syscall
    return "other_kernel", syscall


# What an event-loop sample was doing. glommio re-arms its preemption timers on every
# pass of its loop (a TIMEOUT on its latency ring and a count TIMEOUT on its main ring,
# each replacing one it cancels with an ASYNC_CANCEL) and alternates its submissions
# between those two rings, and io_uring looks a ring up in the task's context
# (an xarray keyed by the ring's address) whenever the submitting task's last ring was
# another (perf/EVENT_LOOP.md). epoll peers have none of these: their loop samples are
# all "wait_wake".
LOOP_PARTS = ["timeouts_cancels", "ring_switch", "poll_arm", "membarrier", "wait_wake"]
TIMEOUT_CANCEL_FRAMES = {"io_timeout", "io_timeout_prep", "__io_timeout_prep",
                         "io_link_timeout_prep", "io_timeout_remove",
                         "io_timeout_remove_prep", "io_async_cancel", "io_async_cancel_prep"}
RING_SWITCH_FRAMES = {"__io_uring_add_tctx_node_from_submit"}
POLL_ARM_FRAMES = {"io_poll_add", "io_poll_add_prep"}


def loop_part(frames: list[tuple[int, str]], syscall: str | None) -> str:
    """Which part of the event loop a sample classify() called "loop" belongs to:
    submitting or cancelling timeouts, the ring look-up a switch of rings costs,
    arming a poll, membarrier(2) (glommio's, before it sleeps), or the rest (waiting,
    waking, running completions' task work, epoll)."""
    names = {sym for addr, sym in frames if addr >= KERNEL_MIN}
    if names & TIMEOUT_CANCEL_FRAMES:
        return "timeouts_cancels"
    if names & RING_SWITCH_FRAMES:
        return "ring_switch"
    if names & POLL_ARM_FRAMES:
        return "poll_arm"
    if syscall == "membarrier":
        return "membarrier"
    return "wait_wake"


def loop_parts_line(loop_us: dict) -> str:
    """"timeouts_cancels 1.79, ring_switch 0.76, ...": a loop's parts in µs/req."""
    return ", ".join(f"{p} {loop_us.get(p, 0.0):.2f}" for p in LOOP_PARTS) or "–"


def loop_parts_legend() -> str:
    return ("timeouts_cancels: TIMEOUT and ASYNC_CANCEL submissions; ring_switch: io_uring's "
            "look-up when a thread submits to another ring than last; poll_arm: POLL_ADD; "
            "wait_wake: waiting, waking, completions' task work, epoll")


def nesting(frames: list[tuple[int, str]]) -> dict[str, bool]:
    """What classify() has to arbitrate in one sample (counted, reported in the JSON)."""
    names = {sym for addr, sym in frames if addr >= KERNEL_MIN}
    send, recv = bool(names & SEND_FRAMES), bool(names & RECV_FRAMES)
    syscalls = {m.group(1) for m in map(_ENTRY.match, names) if m}
    return {"both_directions": send and recv,
            "transfer_in_loop": (send or recv) and bool(syscalls & LOOP_SYSCALLS
                                                        or names & LOOP_FRAMES),
            "two_syscalls": len(syscalls) > 1}


# ───────────────────────────── parsers ─────────────────────────────

_FRAME = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")


def parse_perf_script(text: str):
    """Yields (period, frames leaf→root as (address, symbol)) from `perf script` output
    with call chains (`-F tid,period,ip,sym,dso`, or the default fields)."""
    period, frames, in_sample = 0, [], False
    for line in text.splitlines():
        m = _FRAME.match(line)
        if m and in_sample:
            sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(2))
            frames.append((int(m.group(1), 16), sym))
        elif not line.strip():
            if in_sample:
                yield period, frames
            period, frames, in_sample = 0, [], False
        else:
            # A sample header: the period is the number before "cpu-clock" in the
            # default format, else the last number on the line (-F tid,period).
            m2 = re.search(r"(\d+)\s+cpu-clock", line) or re.search(r"(\d+)\s*:?\s*$", line)
            period, frames, in_sample = (int(m2.group(1)) if m2 else 1), [], True
    if in_sample:
        yield period, frames


def profile_shares(text: str) -> dict:
    """Sample weights (perf periods, ns of CPU) per category and per syscall."""
    cats = {c: 0 for c in CATEGORIES + ["splice_other"]}
    loop = {p: 0 for p in LOOP_PARTS}
    per_syscall: dict[str, int] = {}
    by_syscall: dict[str, dict[str, int]] = {}  # syscall -> category -> weight
    checks = {"both_directions": 0, "transfer_in_loop": 0, "two_syscalls": 0}
    samples = total = 0
    for period, frames in parse_perf_script(text):
        cat, syscall = classify(frames)
        total += period
        samples += 1
        if syscall and cat != "probe":
            per_syscall[syscall] = per_syscall.get(syscall, 0) + period
            d = by_syscall.setdefault(syscall, {})
            d[cat] = d.get(cat, 0) + period
        if cat != "rw_other":
            cats[cat] += period
        if cat == "loop":
            loop[loop_part(frames, syscall)] += period
        for k, v in nesting(frames).items():
            checks[k] += v
    # rw_other: in proportion to the same syscall's classified samples (other kernel
    # when it has none), so a writev to sockets stays send, a write to a pipe other.
    for syscall, d in by_syscall.items():
        rest = d.pop("rw_other", 0)
        known = {c: w for c, w in d.items() if c in CATEGORIES}
        if not rest:
            continue
        if not known:
            cats["other_kernel"] += rest
            continue
        k_total = sum(known.values())
        for c, w in known.items():
            cats[c] += rest * w / k_total
    return {"weights": cats, "loop_weights": loop, "per_syscall": per_syscall,
            "samples": samples, "total_weight": total, "checks": checks}


def parse_perf_stat(text: str) -> dict[str, int | None]:
    """`perf stat -x,` output → {event: count}; None when not counted/supported."""
    out: dict[str, int | None] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split(",")
        if len(f) < 3 or ":" not in f[2]:
            continue  # "Events enabled", blank, headers
        try:
            out[f[2]] = int(float(f[0]))
        except ValueError:
            out[f[2]] = None  # <not counted>, <not supported>
    return out


# The tracepoints of a ring-operations run (`perf record` of a proxy's threads, then
# `perf script`): each ring submission with its opcode, each system call with its
# arguments, each context switch.
RING_OPS_EVENTS = ("io_uring:io_uring_submit_req", "raw_syscalls:sys_enter", "sched:sched_switch")
NR_IO_URING_ENTER = 426


def ring_ops(text: str, syscall_names: dict[int, str]) -> dict:
    """`perf script` of RING_OPS_EVENTS → counts: ring submissions by opcode and ring
    (`ops`, keyed "OPCODE ring N", N the ring's order of appearance), system calls by
    name (`calls`; `io_uring_enter` split by the ring's fd, how many requests it
    submits (0, 1, 2+) and whether it waits (min_complete > 0)), and context switches
    (`switches`). How many passes of an io_uring loop a request costs, and which ring's
    timers they carry, shows here where a CPU profile shows only their sum."""
    ops: dict[str, int] = {}
    calls: dict[str, int] = {}
    rings: dict[str, int] = {}
    switches = 0
    for line in text.splitlines():
        if "io_uring_submit_req" in line:
            m_ring = re.search(r"ring (0x[0-9a-f]+)", line)
            m_op = re.search(r"opcode (\w+)", line)
            if m_ring and m_op:
                n = rings.setdefault(m_ring.group(1), len(rings))
                key = f"{m_op.group(1)} ring {n}"
                ops[key] = ops.get(key, 0) + 1
            continue
        if "sched_switch" in line:
            switches += 1
            continue
        m = re.search(r"NR (\d+) \(([^)]*)\)", line)
        if not m:
            continue
        nr = int(m.group(1))
        if nr == NR_IO_URING_ENTER:
            a = [int(x, 16) for x in m.group(2).split(", ")[:3]]
            sub = "2+" if a[1] >= 2 else str(a[1])
            name = f"io_uring_enter fd {a[0]} submit {sub}" + (" wait" if a[2] else "")
        else:
            name = syscall_names.get(nr, str(nr))
        calls[name] = calls.get(name, 0) + 1
    return {"ops": ops, "calls": calls, "switches": switches}


def syscall_names() -> dict[int, str]:
    """x86-64 system call numbers → names, from the kernel headers."""
    names: dict[int, str] = {}
    try:
        text = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").read_text()
    except OSError:
        return names
    for m in re.finditer(r"#define __NR_(\w+) (\d+)", text):
        names[int(m.group(2))] = m.group(1)
    return names


def event_label(event: str) -> str:
    return event.split(":", 1)[1].removeprefix("sys_enter_")


# ───────────────────────────── arithmetic ─────────────────────────────


def per_request(cpu_us_per_req: float, prof: dict, counts: dict, requests: int) -> dict:
    """Category shares of the profile × measured CPU µs/req. splice(2) samples outside
    either direction's code are split evenly between send and recv (every forwarded
    chunk takes one splice each way)."""
    w = prof["weights"]
    total = prof["total_weight"] or 1
    us = {c: cpu_us_per_req * w[c] / total for c in CATEGORIES}
    half = cpu_us_per_req * w["splice_other"] / total / 2
    us["send"] += half
    us["recv"] += half
    return {
        "us": us,
        "splice_other_us": 2 * half,
        "loop_us": {p: cpu_us_per_req * v / total
                    for p, v in prof.get("loop_weights", {}).items()},
        "per_syscall_us": {k: cpu_us_per_req * v / total
                           for k, v in sorted(prof["per_syscall"].items(), key=lambda x: -x[1])},
        "calls_per_req": {event_label(k): v / requests
                          for k, v in sorted(counts.items(), key=lambda x: -(x[1] or 0)) if v},
        "floor_us": us["send"] + us["recv"],
        "net_us": cpu_us_per_req - us["probe"],
    }


def median_tree(samples: list):
    """Element-wise median of equally shaped dicts of numbers (missing keys skipped)."""
    first = samples[0]
    if isinstance(first, dict):
        keys = []
        for s in samples:
            keys += [k for k in s if k not in keys]
        return {k: median_tree([s[k] for s in samples if k in s]) for k in keys}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        vals = [s for s in samples if isinstance(s, (int, float))]
        return statistics.median(vals)
    return first


def floor_lines(rows: list[dict]) -> list[dict]:
    """Per Remora row: its transfer floor ÷ the best competitor's CPU/req (net of probes;
    also ÷ that competitor's CPU/req measured without perf, in its warm-up)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    comps = [r for r in ok if is_competitor(r["proxy"])]
    best = min(comps, key=lambda r: r["net_us"]) if comps else None
    out = []
    for r in ok:
        if is_remora(r["proxy"]) and best:
            noperf = best.get("cpu_us_per_req_noperf")
            out.append({"proxy": r["proxy"], "floor_us": r["floor_us"], "vs": best["proxy"],
                        "best_net_us": best["net_us"],
                        "ratio": r["floor_us"] / best["net_us"] if best["net_us"] else None,
                        "best_noperf_us": noperf,
                        "ratio_noperf": r["floor_us"] / noperf if noperf else None})
    return out


def sanity_problems(data: dict, tolerance: float = 0.02) -> list[str]:
    """Every number finite and >= 0; categories sum to no more than the total."""
    problems = []

    def walk(v, where):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{where}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{where}[{i}]")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if not math.isfinite(v) or v < 0:
                problems.append(f"{where} = {v}")

    for r in data["rows"]:
        if r.get("status") != "ok":
            continue
        where = f"{r['scenario']}/{r['proxy']}"
        walk({k: v for k, v in r.items() if k != "rounds"}, where)
        parts = sum(r["us"].values())
        if parts > r["cpu_us_per_req"] * (1 + tolerance) + 0.01:
            problems.append(f"{where}: categories sum to {parts:.3f} µs > total "
                            f"{r['cpu_us_per_req']:.3f} µs")
        if r["samples"] < 50:
            problems.append(f"{where}: only {r['samples']} perf samples")
    return problems


# ───────────────────────────── perf processes ─────────────────────────────


class PerfProc:
    """A perf stat/record attached to the proxy, started disabled (`-D -1`) and switched
    on and off through `--control fd:CTL,ACK`: perf answers "ack" once the events are
    enabled, so the measured window starts when perf really counts."""

    def __init__(self, rig: Rig, sub: str, args: list[str], log_path: Path) -> None:
        ctl_r, self.ctl_w = os.pipe()
        self.ack_r, ack_w = os.pipe()
        argv = ["perf", sub, "-D", "-1", "--control", f"fd:{ctl_r},{ack_w}", *args]
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                      pass_fds=(ctl_r, ack_w),
                                      preexec_fn=harness._die_with_parent)
        self.p.argv = argv  # type: ignore[attr-defined]
        rig.procs.live.append(self.p)  # Rig.close() ends it if we fail half-way
        self.rig = rig
        os.close(ctl_r)
        os.close(ack_w)

    def command(self, word: str, timeout: float = 60.0) -> None:
        try:
            os.write(self.ctl_w, f"{word}\n".encode())
        except BrokenPipeError:
            raise HarnessError(f"{shlex.join(self.argv)} exited:\n{harness.tail(self.log_path)}")
        got = b""
        deadline = time.monotonic() + timeout
        while b"ack" not in got:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.ack_r], [], [], left)[0]:
                raise HarnessError(f"perf did not acknowledge '{word}' within {timeout:.0f}s: "
                                   f"{shlex.join(self.argv)}\n{harness.tail(self.log_path)}")
            chunk = os.read(self.ack_r, 64)
            if not chunk:
                raise HarnessError(f"{shlex.join(self.argv)} exited "
                                   f"({self.p.poll()}):\n{harness.tail(self.log_path)}")
            got += chunk

    def finish(self) -> int:
        """SIGINT (perf writes its results and exits), then the descriptors are closed."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            rc = self.p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        if self.p in self.rig.procs.live:
            self.rig.procs.live.remove(self.p)
        for fd in (self.ctl_w, self.ack_r):
            try:
                os.close(fd)
            except OSError:
                pass
        return rc


def record_args(freq: int) -> list[str]:
    # Kernel call chains only: user frames play no part in the categories, and not
    # walking user stacks keeps perf's own cost per sample down.
    return ["-e", "cpu-clock", "-F", str(freq), "-g", "--kernel-callchains"]


# ───────────────────────────── environment ─────────────────────────────


def ensure_perf() -> None:
    """perf installed (as root: apt-get install linux-perf), allowed, with tracepoints."""
    if shutil.which("perf") is None:
        if os.geteuid() != 0:
            raise SetupError("perf is missing: run `apt-get install linux-perf` as root "
                             "(or run perf/breakdown as root, it installs it)")
        harness.ensure_tools(extra_apt=["linux-perf"], extra_bins=["perf"])
    if os.geteuid() != 0:
        paranoid = perf_event_paranoid()
        if paranoid > -1:
            raise SetupError(f"kernel.perf_event_paranoid is {paranoid} and you are not root: "
                             "run perf/breakdown as root (tracepoints and kernel call chains "
                             "need it, or `sysctl kernel.perf_event_paranoid=-1`)")


def perf_event_paranoid() -> int:
    try:
        return int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return 2


def pick_events() -> tuple[list[str], list[str]]:
    """The tracepoints this kernel has (from `perf list`): (events, notes)."""
    r = subprocess.run(["perf", "list", "syscalls:sys_enter_*", "io_uring:*"],
                       capture_output=True, text=True, timeout=60)
    have = set(re.findall(r"\b((?:syscalls|io_uring):[a-z0-9_]+)\b", r.stdout))
    events = [f"syscalls:sys_enter_{s}" for s in SYSCALLS if f"syscalls:sys_enter_{s}" in have]
    if not any(e.startswith("syscalls:") for e in events):
        raise SetupError("perf list shows no syscalls:sys_enter_* tracepoints: mount tracefs "
                         "(`mount -t tracefs nodev /sys/kernel/tracing`) as root, or use a "
                         "kernel built with CONFIG_FTRACE_SYSCALLS")
    notes = []
    missing = [s for s in SYSCALLS if f"syscalls:sys_enter_{s}" not in have]
    if missing:
        notes.append(f"no tracepoint on this kernel for: {', '.join(missing)}")
    uring = next((e for e in URING_SUBMIT if e in have), None)
    if uring:
        events.append(uring)
    else:
        notes.append("no io_uring submit tracepoint (io_uring_submit_req/_sqe): SQEs not counted")
    return events, notes


def probe_perf(events: list[str], freq: int) -> None:
    """perf stat on the tracepoints and perf record with call chains, on `true`."""
    with tempfile.TemporaryDirectory() as d:
        for what, argv in [
            ("count tracepoints", ["perf", "stat", "-x,", "-e", ",".join(events), "--", "true"]),
            ("record cpu-clock call chains",
             ["perf", "record", *record_args(freq), "-o", f"{d}/probe.data", "--", "true"]),
        ]:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                first = next((l for l in r.stderr.splitlines() if l.strip()), "no output")
                raise SetupError(f"perf cannot {what} here ({first.strip()}); run as root "
                                 "on a kernel with tracepoints (see perf/README.md)")


def perf_version() -> str:
    return harness.cmd_output(["perf", "--version"])


# ───────────────────────────── one measurement ─────────────────────────────


def measure(rig: Rig, sc, name: str, seconds: int, warmup: int, events: list[str],
            freq: int) -> dict:
    inst = rig.start(name)
    tag = f"{inst.log_path.stem}"
    stat_out, data = rig.dir / f"{tag}.stat", rig.dir / f"{tag}.perf.data"
    try:
        rig.check_http(inst.port, close=sc.close)
        noperf = None
        if warmup:
            pids = inst.pids()
            t0 = cpu_ticks(pids)
            w = run_wrk(rig, inst.port, sc, warmup)
            validate_wrk(w, f"{sc.name}/{name} warm-up")
            noperf = (cpu_ticks(pids) - t0) / CLK_TCK * 1e6 / w["requests"]
        pids = inst.pids()
        pid_arg = ",".join(map(str, pids))
        stat = PerfProc(rig, "stat", ["-x,", "-e", ",".join(events), "-p", pid_arg,
                                      "-o", str(stat_out)], rig.dir / f"{tag}.perf-stat.log")
        rec = PerfProc(rig, "record", [*record_args(freq), "-p", pid_arg, "-o", str(data)],
                       rig.dir / f"{tag}.perf-record.log")
        try:
            stat.command("enable")
            rec.command("enable")
            t0 = cpu_ticks(pids)
            res = run_wrk(rig, inst.port, sc, seconds)
            ticks = cpu_ticks(pids) - t0
            rec.command("disable")
            stat.command("disable")
        finally:
            rc_stat, rc_rec = stat.finish(), rec.finish()
        validate_wrk(res, f"{sc.name}/{name}")
        rig.check_http(inst.port, close=sc.close)  # still serving correctly afterwards
        if not stat_out.exists() or not data.exists():
            raise HarnessError(f"perf wrote no output (stat exit {rc_stat}, record exit {rc_rec}):"
                               f"\n{harness.tail(rig.dir / f'{tag}.perf-record.log')}")
        counts = parse_perf_stat(stat_out.read_text())
        script = subprocess.run(["perf", "script", "-i", str(data), "-F", "tid,period,ip,sym,dso"],
                                capture_output=True, text=True, timeout=600)
        if script.returncode != 0:
            raise HarnessError(f"perf script failed: {script.stderr[-500:]}")
        prof = profile_shares(script.stdout)
        cpu_us = ticks / CLK_TCK * 1e6 / res["requests"]
        sample = {
            "rps": res["rps"], "requests": res["requests"], "p50_us": res["p50_us"],
            "p99_us": res["p99_us"], "cpu_us_per_req": cpu_us,
            "cpu_util": ticks / CLK_TCK / res["seconds"],
            "cpu_us_per_req_noperf": noperf,
            "samples": prof["samples"],
            # The same CPU time seen by the sampler (cpu-clock periods are ns of CPU):
            # should be close to cpu_us_per_req.
            "sampled_cpu_us_per_req": prof["total_weight"] / 1e3 / res["requests"],
            "checks": prof["checks"],
            **per_request(cpu_us, prof, counts, res["requests"]),
        }
        if not rig.keep:
            data.unlink(missing_ok=True)
        return sample
    finally:
        rig.stop(inst)


# ───────────────────────────── rendering ─────────────────────────────

ROW_KEYS = ["rps", "cpu_us_per_req", "cpu_util", "cpu_us_per_req_noperf", "samples",
            "sampled_cpu_us_per_req", "us", "loop_us", "splice_other_us", "per_syscall_us",
            "calls_per_req", "floor_us", "net_us", "checks"]


def summarise(sc_name: str, name: str, samples: list[dict]) -> dict:
    """Medians over rounds. CPU µs/req is the median of the rounds' totals; each category
    is the median of its share of the total, the shares rescaled to add up to 1, so that
    the columns still add up to the total (medians of the parts would not)."""
    row = {"scenario": sc_name, "proxy": name, "status": "ok"}
    med = median_tree(samples)
    row.update({k: med.get(k) for k in ROW_KEYS})
    total = row["cpu_us_per_req"]
    shares = {c: statistics.median([s["us"][c] / s["cpu_us_per_req"] if s["cpu_us_per_req"]
                                    else 0.0 for s in samples]) for c in CATEGORIES}
    norm = sum(shares.values()) or 1.0
    row["us"] = {c: total * shares[c] / norm for c in CATEGORIES}
    row["floor_us"] = row["us"]["send"] + row["us"]["recv"]
    row["net_us"] = total - row["us"]["probe"]
    row["rounds"] = samples
    return row


def top_calls(row: dict, n: int = 5) -> str:
    calls = [(k, v) for k, v in row["calls_per_req"].items() if v >= 0.05]
    return ", ".join(f"{k} {v:.2f}" for k, v in calls[:n]) or "–"


def render_md(data: dict) -> str:
    m = data["meta"]
    lines = [
        "# Where each proxy's CPU time per request goes",
        "",
        f"- date: {m['date']}",
        f"- command: `{m['command']}`",
        f"- rounds: {m['rounds']} × {m['duration_s']} s per proxy (medians over rounds), "
        f"{m['warmup_s']} s warm-up{' — QUICK smoke run, not a measurement' if m.get('quick') else ''}",
        f"- pinning: {m['pinning']}",
        f"- machine: {m['cpu']}, {m['cpus_online']} CPUs, kernel {m['kernel']}, "
        f"load average {m['loadavg_start']} at start, {m['loadavg_end']} at end",
        f"- profile: `perf record {' '.join(record_args(m['frequency']))}`, `perf stat` on "
        f"{len(m['events'])} tracepoints; {m['perf']}",
        "- versions: " + "; ".join(m["versions"].values()),
        *[f"- note: {n}" for n in m.get("notes", [])],
        "",
        "All figures are µs of the proxy's CPU per request. CPU µs/req = utime+stime of all "
        "the proxy's processes and threads over the measured run ÷ requests (as in "
        "perf/compare), measured **with perf attached**; the columns split it by the share "
        "of cpu-clock samples in each category (see perf/README.md): send and recv = "
        "socket transfer syscalls (send includes the loopback delivery into the peer), "
        "event loop = epoll / io_uring_enter / membarrier / io_uring task work, probes = "
        "the tracepoints' own cost. \"without perf\" is the same CPU/req measured in the "
        "warm-up run, with nothing attached. syscalls/req from `perf stat` "
        "(io_uring_submit_req = io_uring SQEs).",
        "",
    ]
    by_sc: dict[str, list[dict]] = {}
    for r in data["rows"]:
        by_sc.setdefault(r["scenario"], []).append(r)
    for sc_name, rows in by_sc.items():
        lines += [f"## {sc_name}", "",
                  "| proxy | req/s | CPU µs/req | send µs | recv µs | event loop µs | "
                  "other kernel µs | user µs | probes µs | CPU µs/req without perf | "
                  "syscalls/req (top) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            if r.get("status") != "ok":
                lines.append(f"| {r['proxy']} | {r.get('note', r.get('status'))} |" + " |" * 9)
                continue
            u = r["us"]
            lines.append(
                f"| {r['proxy']} | {fmt(r['rps'])} | {fmt(r['cpu_us_per_req'], 2)} | "
                f"{fmt(u['send'], 2)} | {fmt(u['recv'], 2)} | {fmt(u['loop'], 2)} | "
                f"{fmt(u['other_kernel'], 2)} | {fmt(u['user'], 2)} | {fmt(u['probe'], 2)} | "
                f"{fmt(r.get('cpu_us_per_req_noperf'), 2)} | {top_calls(r)} |")
        ok = [r for r in rows if r.get("status") == "ok"]
        if ok:
            lines += ["", "**transfer floor** (send + recv µs/req; share of the proxy's own "
                      "CPU/req net of probes): " +
                      ", ".join(f"{r['proxy']} {r['floor_us']:.2f} "
                                f"({100 * r['floor_us'] / r['net_us']:.0f}%)"
                                if r["net_us"] else f"{r['proxy']} {r['floor_us']:.2f}"
                                for r in ok)]
            for f in floor_lines(rows):
                alt = (f" (÷ its {f['best_noperf_us']:.2f} without perf = {f['ratio_noperf']:.2f})"
                       if f["ratio_noperf"] is not None else "")
                lines.append(f"- {f['proxy']}: floor {f['floor_us']:.2f} ÷ {f['vs']}'s CPU/req "
                             f"{f['best_net_us']:.2f} (net of probes) = **{f['ratio']:.2f}**{alt}")
            lines += ["", "Kernel time by syscall, µs/req (calls/req):", ""]
            for r in ok:
                calls = r["calls_per_req"]
                parts = [f"{k} {v:.2f}" + (f" ({calls[k]:.2f})" if k in calls else "")
                         for k, v in r["per_syscall_us"].items() if v >= 0.05]
                lines.append(f"- {r['proxy']}: " + (", ".join(parts) or "–"))
            lines += ["", "Event loop by part, µs/req (" + loop_parts_legend() + "):", ""]
            for r in ok:
                lines.append(f"- {r['proxy']}: {loop_parts_line(r.get('loop_us') or {})}")
        lines.append("")
    if data.get("failures"):
        lines += ["## Failures", ""] + [f"- {f}" for f in data["failures"]] + [""]
    return "\n".join(lines)


def write_outputs(data: dict, out_dir: Path, write_md: bool) -> None:
    """breakdown.json, then the Markdown rendered from the JSON alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "breakdown.json").write_text(json.dumps(data, indent=2) + "\n")
    md = render_md(data)
    (out_dir / "breakdown.md").write_text(md + "\n")
    log(f"wrote {out_dir / 'breakdown.json'} and breakdown.md")
    if write_md:
        (harness.PERF_DIR / "BREAKDOWN.md").write_text(
            "<!-- Written by perf/breakdown --write-md; see perf/README.md. -->\n" + md + "\n")
        log(f"wrote {harness.PERF_DIR / 'BREAKDOWN.md'}")


# ───────────────────────────── main ─────────────────────────────


@harness.exit_codes()
def breakdown_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="perf/breakdown",
        description="Where each proxy's CPU time per request goes (send, recv, event loop, "
                    "other kernel, user), from /proc, perf stat tracepoints and a perf "
                    "cpu-clock profile of the same wrk run. See perf/README.md.")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 s runs (1 s warm-up), remora-copy and nginx-stream, "
                         "checks the numbers are sane, never timing")
    ap.add_argument("--proxies", help=f"comma-separated (default {','.join(DEFAULT_PROXIES)})")
    ap.add_argument("--duration", type=int, help="seconds per measured wrk run (default 8; --quick 1)")
    ap.add_argument("--warmup", type=int,
                    help="seconds of wrk before each run, also measured without perf (default 2; --quick 1)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds, proxies rotated each round; the report gives medians (default 1)")
    ap.add_argument("--frequency", type=int, default=1999, help="perf samples per second (default 1999)")
    ap.add_argument("--no-build", action="store_true", help="skip `cargo build --release`")
    ap.add_argument("--remora-bin", type=Path, default=REPO / "target/release/remora",
                    help="Remora binary (default target/release/remora)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="output directory (default perf/results)")
    ap.add_argument("--write-md", action="store_true", help="also write perf/BREAKDOWN.md (committed)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (perf data, logs)")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only re-render breakdown.md (and with --write-md perf/BREAKDOWN.md) "
                         "from a saved breakdown.json into --out")
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        write_outputs(data, args.out, write_md=args.write_md)
        return 0
    wanted = (args.proxies.split(",") if args.proxies
              else QUICK_PROXIES if args.quick else DEFAULT_PROXIES)
    unknown = [p for p in wanted if p not in PROXIES or p == "direct"]
    if unknown:
        ap.error(f"unknown proxy: {', '.join(unknown)} (choose from {', '.join(DEFAULT_PROXIES)})")
    seconds = args.duration or (1 if args.quick else 8)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    scenarios = [s for s in SCENARIOS if s.name in ("l4-keepalive", "l7-keepalive")]

    rig = None
    failures: list[str] = []
    signal.signal(signal.SIGTERM, harness._sigterm)
    try:
        ensure_perf()
        harness.ensure_tools(extra_apt=["linux-perf"], extra_bins=["perf"])
        events, notes = pick_events()
        probe_perf(events, args.frequency)
        harness.check_memlock()
        harness.build_remora(args.no_build)
        if not args.remora_bin.exists():
            raise SetupError(f"{args.remora_bin} does not exist (build it or drop --no-build)")
        _, hard = harness.raise_nofile()
        load_cpu, proxy_cpu, pinned = harness.pick_cpus(argparse.Namespace(load_cpu=None, proxy_cpu=None))
        if load_cpu is not None:
            os.sched_setaffinity(0, {load_cpu})  # the harness and perf itself stay off the proxy's CPU
        rig = Rig(args.remora_bin.resolve(), load_cpu, proxy_cpu, hard, keep=args.keep)
        pinning = (f"proxy on CPU{proxy_cpu}; wrk, backend, perf and harness on CPU{load_cpu} "
                   "(taskset)" if pinned else "none (fewer than 2 CPUs allowed)")
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": shlex.join(["perf/breakdown", *(argv if argv is not None else sys.argv[1:])]),
            "quick": args.quick, "rounds": args.rounds, "duration_s": seconds, "warmup_s": warmup,
            "frequency": args.frequency, "events": events, "notes": notes,
            "kernel": platform.release(), "cpu": cpu_model(), "cpus_online": os.cpu_count(),
            "pinning": pinning, "loadavg_start": loadavg(), "perf": perf_version(),
            "versions": harness.versions(args.remora_bin),
        }
        log(f"{args.rounds} round(s) × {seconds}s, {pinning}, work dir {rig.dir}")
        rig.start_backend()
        has_l7 = rig.probe_remora_l7()
        samples: dict[tuple[str, str], list[dict]] = {}
        na: dict[tuple[str, str], str] = {}
        for sc in scenarios:
            for name in harness.proxies_for(sc, wanted):
                if name == "direct":
                    continue
                if name == "remora-l7" and not has_l7:
                    na[(sc.name, name)] = harness.L7_NA
                else:
                    samples[(sc.name, name)] = []
        broken: set[tuple[str, str]] = set()
        for rnd in range(args.rounds):
            for sc in scenarios:
                names = [n for (s, n) in samples if s == sc.name]
                k = rnd % max(1, len(names))
                for name in names[k:] + names[:k]:
                    if (sc.name, name) in broken:
                        continue
                    log(f"round {rnd + 1}/{args.rounds} {sc.name} {name}")
                    try:
                        s = measure(rig, sc, name, seconds, warmup, events, args.frequency)
                    except HarnessError as e:
                        failures.append(f"{sc.name}/{name}: {e}")
                        broken.add((sc.name, name))
                        log(f"FAILED {sc.name}/{name}: {e}")
                        continue
                    samples[(sc.name, name)].append(s)
                    u = s["us"]
                    log(f"  {s['rps']:,.0f} req/s, {s['cpu_us_per_req']:.2f} µs/req: send "
                        f"{u['send']:.2f} recv {u['recv']:.2f} loop {u['loop']:.2f} other "
                        f"{u['other_kernel']:.2f} user {u['user']:.2f} probes {u['probe']:.2f}")
        rows = []
        for sc in scenarios:
            for name in harness.proxies_for(sc, wanted):
                key = (sc.name, name)
                if key in na:
                    rows.append({"scenario": sc.name, "proxy": name, "status": "n/a", "note": na[key]})
                elif key in broken:
                    rows.append({"scenario": sc.name, "proxy": name, "status": "failed",
                                 "note": "failed (see failures)"})
                elif samples.get(key):
                    rows.append(summarise(sc.name, name, samples[key]))
        meta["loadavg_end"] = loadavg()
        data = {"meta": meta, "rows": rows, "failures": failures}
        problems = sanity_problems(data)
        data["problems"] = problems
        write_md = args.write_md and not failures and not problems and not args.quick
        if args.write_md and not write_md:
            log("not writing perf/BREAKDOWN.md: quick run, failures or insane numbers")
        write_outputs(data, args.out, write_md=write_md)
        print(render_md(data))
        if problems:
            for p in problems:
                log(f"insane number: {p}")
            return 1
    finally:
        if rig is not None:
            rig.close()
    if failures:
        log(f"{len(failures)} proxy/scenario pair(s) failed:")
        for f in failures:
            log(f"  {f}")
        return 1
    return 0
