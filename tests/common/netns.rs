//! Network-namespace labs for end-to-end tests that need real packets between hosts:
//! namespaces joined by veth pairs, commands and `moat serve` run inside them, and
//! everything torn down on drop (even when an assertion failed half-way). Needs root
//! and `ip`; `skip_reason` says why a test cannot run.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{collect_lines, have, moat_bin, wait_for_text};

/// Namespaces, and the processes running in them; all torn down on drop.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    pub children: Vec<Child>,
}

impl Lab {
    /// Namespaces will be named `<prefix>-<pid>-<role>`.
    pub fn new(prefix: &str) -> Self {
        Lab {
            prefix: prefix.to_owned(),
            namespaces: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Creates a namespace for `role` with its loopback up.
    pub fn netns(&mut self, role: &str) -> String {
        let name = format!("{}-{}-{role}", self.prefix, std::process::id());
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        // No duplicate address detection on links created later (link-local
        // addresses included), so IPv6 works as soon as a link is up.
        for key in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            sh(&["ip", "netns", "exec", &name, "sysctl", "-qw", key]);
        }
        name
    }

    /// A veth pair between two namespaces, both ends up, with the given addresses.
    pub fn link(
        &self,
        (a, a_dev, a_addrs): (&str, &str, &[&str]),
        (b, b_dev, b_addrs): (&str, &str, &[&str]),
    ) {
        sh(&[
            "ip", "link", "add", a_dev, "netns", a, "type", "veth", "peer", "name", b_dev, "netns",
            b,
        ]);
        for (ns, dev, addrs) in [(a, a_dev, a_addrs), (b, b_dev, b_addrs)] {
            for addr in addrs {
                let mut cmd = vec!["ip", "-n", ns, "addr", "add", addr, "dev", dev];
                if addr.contains(':') {
                    // No duplicate address detection: the address is usable at once.
                    cmd.push("nodad");
                }
                sh(&cmd);
            }
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// Waits (bounded) until no IPv6 address in any namespace is still tentative.
    pub fn wait_ipv6_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for ns in &self.namespaces {
            loop {
                let out = sh(&["ip", "-n", ns, "-6", "addr", "show", "tentative"]);
                if out.stdout.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "IPv6 addresses stay tentative in {ns}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts `moat serve` inside `ns` and returns its log (stderr) once it logged
    /// that it is ready. The process is stopped when the lab drops.
    pub fn serve(&mut self, ns: &str, manifest: &Path, state: &Path) -> Arc<Mutex<String>> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, moat_bin(), "serve"])
            .arg("--manifest")
            .arg(manifest)
            .arg("--state")
            .arg(state)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moat serve starts");
        let log = Arc::new(Mutex::new(String::new()));
        collect_lines(child.stderr.take().unwrap(), Arc::clone(&log));
        self.children.push(child);
        assert!(
            wait_for_text(&log, "moat is ready", Duration::from_secs(30)),
            "moat serve did not become ready:\n{}",
            log.lock().unwrap()
        );
        log
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            stop_gracefully(child);
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// SIGTERM, a bounded wait, then SIGKILL.
fn stop_gracefully(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Why a namespace test cannot run here (not root, or a tool missing), if it cannot.
pub fn skip_reason(tools: &[&str]) -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    tools
        .iter()
        .find(|tool| !have(tool))
        .map(|tool| format!("`{tool}` is not installed"))
}

/// Runs a setup command that must succeed.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `args` inside `ns`, killed after `limit`.
pub fn in_ns(ns: &str, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec starts");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("child output")
}

/// What a bare TCP connect gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Tcp {
    Connected,
    Refused,
    /// No SYN-ACK and no reset within 4 s.
    NoAnswer,
}

/// A bare TCP connect from `ns` to `addr`:`port` (bash's `/dev/tcp`), bounded by 4 s.
pub fn tcp_connect(ns: &str, addr: &str, port: u16) -> Tcp {
    let script = format!("exec 3<>/dev/tcp/{addr}/{port}");
    let out = in_ns(
        ns,
        &["timeout", "4", "bash", "-c", &script],
        Duration::from_secs(10),
    );
    match out.status.code() {
        Some(0) => Tcp::Connected,
        Some(124) => Tcp::NoAnswer,
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("refused"), "unexpected connect failure: {err}");
            Tcp::Refused
        }
    }
}

/// `moat firewall --apply` inside `ns`, which must succeed.
pub fn apply_firewall(ns: &str, manifest: &Path) {
    let out = in_ns(
        ns,
        &[
            moat_bin(),
            "firewall",
            "--apply",
            "--manifest",
            manifest.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "moat firewall --apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `dir/moat.yaml`: the `broker` section given (its lines, indented under
/// `broker:`), and one user `lan` with `password` who may publish and subscribe
/// under `lan/#`. The namespace tests' common manifest.
pub fn lan_manifest(dir: &Path, broker: &str, password: &str) -> std::path::PathBuf {
    let hash = moat::auth::hash_password(password.as_bytes()).unwrap();
    let manifest = format!(
        "version: 1
broker:
{broker}users:
  lan:
    password_hash: \"{hash}\"
    publish: [\"lan/#\"]
    subscribe: [\"lan/#\"]
"
    );
    let path = dir.join("moat.yaml");
    std::fs::write(&path, manifest).unwrap();
    path
}
