//! The `moat-bench` executable's contract with scripts (`bench/compare.sh`): usage
//! errors exit 2 and say why, help exits 0, and a broker that is not there is a
//! failed run (exit 1) with the address in the message, within a bounded time.
//! Scenarios against a real broker are in the workspace root's tests/bench_smoke.rs.

use std::net::TcpListener;
use std::process::{Command, Output};

fn moat_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat-bench"))
        .args(args)
        .output()
        .expect("moat-bench runs")
}

#[test]
fn bad_arguments_are_a_usage_error() {
    let out = moat_bench(&["--", "fan-in", "--host", "192.0.2.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn help_succeeds() {
    let out = moat_bench(&["fan-in", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--publishers"));
}

#[test]
fn no_broker_is_a_failed_run() {
    // A port nothing listens on: bind one, note it, close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = moat_bench(&[
        "connect-rate",
        "--port",
        &port.to_string(),
        "--duration",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{stderr}"
    );
}
