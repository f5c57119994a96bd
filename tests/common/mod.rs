//! Shared fixture for end-to-end tests: a temp dir with a manifest, the real `moat
//! serve` process on loopback ports, and helpers to run real MQTT clients against it.
#![allow(dead_code)]

pub mod cli;
pub mod durable;
pub mod guest;
pub mod mosquitto;
pub mod netns;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "test-password-123";

/// The `moat` the tests drive: this build's, unless `MOAT_BIN` names another one
/// (`.ci/aarch64` points it at a qemu-user wrapper around the aarch64 release build).
pub fn moat_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("MOAT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_moat").to_string())
    })
}

/// A loopback port free now, for a listener moat will open, never the same twice in
/// one test binary. Taken below the kernel's ephemeral range: a port found with
/// `bind(0)` comes from that range, where every outgoing connection also takes its
/// local port, so between this check and moat's bind a client could take it ("cannot
/// listen ...: Address already in use" in CI).
pub fn free_port() -> u16 {
    const LOW: u16 = 10_000;
    /// The next port to try and the end of the range (the ephemeral range's start,
    /// read once per binary).
    static NEXT: Mutex<Option<(u16, u16)>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap();
    let (mut port, high) = *next.get_or_insert_with(|| {
        let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let high = ephemeral_start.max(LOW + 1);
        // Each binary starts at its own place, so binaries run at once rarely meet.
        let start = LOW + (std::process::id() % u32::from(high - LOW)) as u16;
        (start, high)
    });
    for _ in LOW..high {
        let candidate = port;
        port = if port + 1 >= high { LOW } else { port + 1 };
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            *next = Some((port, high));
            return candidate;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// `N` distinct free loopback ports.
pub fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| free_port())
}

/// argon2id hash of the shared test password (computed once per test binary).
pub fn password_hash() -> String {
    static HASH: Mutex<Option<String>> = Mutex::new(None);
    let mut slot = HASH.lock().unwrap();
    slot.get_or_insert_with(|| moat::auth::hash_password(PASSWORD.as_bytes()).unwrap())
        .clone()
}

/// Where mqtt.js (Zigbee2MQTT's client library) is installed: `node_modules` under
/// `$MOAT_NPM_PREFIX` (default `/opt/moat-npm`; `.ci/run` installs `mqtt@5` there),
/// when node is on the PATH too. Missing under CI is a failure, not a skip.
pub fn mqtt_js() -> Option<PathBuf> {
    let prefix = std::env::var("MOAT_NPM_PREFIX").unwrap_or_else(|_| "/opt/moat-npm".into());
    let modules = Path::new(&prefix).join("node_modules");
    if have("node") && modules.join("mqtt/package.json").is_file() {
        return Some(modules);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install mqtt.js: npm install --prefix {prefix} mqtt@5"
    );
    eprintln!("skipping: node or mqtt.js missing (npm install --prefix {prefix} mqtt@5)");
    None
}

/// Runs `node SCRIPT ARGS...` with mqtt.js on its module path, bounded by `limit`.
pub fn node(modules: &Path, script: &str, args: &[String], limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.js");
    std::fs::write(&path, script).unwrap();
    run_bounded(
        Command::new("node")
            .arg(&path)
            .args(args)
            .env("NODE_PATH", modules),
        limit,
    )
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A running `moat serve` in its own temp dir. Killed on drop.
pub struct Moat {
    pub dir: tempfile::TempDir,
    pub tls_port: u16,
    pub plain_port: Option<u16>,
    child: Option<Child>,
    pub log: Arc<Mutex<String>>,
}

impl Moat {
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("moat.yaml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn ca(&self) -> PathBuf {
        self.state().join("ca.pem")
    }

    pub fn device_dir(&self, name: &str) -> PathBuf {
        self.state().join("devices").join(name)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Starts moat with a manifest. `body` is the manifest text after the broker
    /// section (users, devices, roles); `{HASH}` is replaced by the test password hash.
    pub fn start(body: &str) -> Moat {
        Self::start_with(body, false, "")
    }

    pub fn start_with(body: &str, plain: bool, extra_broker: &str) -> Moat {
        let dir = tempfile::tempdir().unwrap();
        let tls_port = free_port();
        // Two free ports in a row may be the same one: the plain listener needs another.
        let plain_port = plain.then(|| {
            (0..100)
                .map(|_| free_port())
                .find(|&port| port != tls_port)
                .expect("a second free loopback port")
        });
        let plain_line = plain_port
            .map(|p| format!("    plain: {{ address: \"127.0.0.1\", port: {p} }}\n"))
            .unwrap_or_default();
        let manifest = format!(
            "version: 1\nbroker:\n  hostnames: [moat.test]\n  listen:\n    tls: {{ address: \"127.0.0.1\", port: {tls_port} }}\n{plain_line}  networks: [loopback]\n{extra_broker}{}",
            body.replace("{HASH}", &password_hash())
        );
        std::fs::write(dir.path().join("moat.yaml"), manifest).unwrap();
        Self::start_in(dir, tls_port, plain_port)
    }

    /// Starts moat on a manifest already written at `dir/moat.yaml` (an imported one,
    /// say) whose TLS listener is 127.0.0.1:`tls_port` (and plain one `plain_port`).
    pub fn start_in(dir: tempfile::TempDir, tls_port: u16, plain_port: Option<u16>) -> Moat {
        let mut moat = Moat {
            dir,
            tls_port,
            plain_port,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        };
        moat.spawn();
        moat
    }

    /// (Re)starts the process on the same directory and ports.
    pub fn spawn(&mut self) {
        self.log.lock().unwrap().clear();
        let mut child = Command::new(moat_bin())
            .arg("serve")
            .arg("--manifest")
            .arg(self.manifest_path())
            .arg("--state")
            .arg(self.state())
            .arg("--pid-file")
            .arg(self.dir.path().join("moat.pid"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moat serve starts");
        collect_lines(child.stderr.take().unwrap(), Arc::clone(&self.log));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr: SocketAddr = ([127, 0, 0, 1], self.tls_port).into();
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("moat exited early ({status}):\n{}", self.log());
            }
            if self.log().contains("moat is ready") && TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moat did not become ready:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits for the process to exit (graceful shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Resident memory of the broker process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Arguments for mosquitto_pub/sub over TLS with a password.
    pub fn tls_args(&self, user: &str) -> Vec<String> {
        let mut args = login_args(self.tls_port, user);
        args.extend(["--cafile".into(), path_str(&self.ca())]);
        args
    }

    /// Arguments for mosquitto_pub/sub over the plaintext listener with a password.
    pub fn plain_args(&self, user: &str) -> Vec<String> {
        login_args(self.plain_port.expect("a plaintext listener"), user)
    }

    /// Arguments for mosquitto_pub/sub over TLS as a device with its client certificate.
    pub fn cert_args(&self, device: &str) -> Vec<String> {
        let dir = self.device_dir(device);
        let mut args = vec!["-h".into(), "127.0.0.1".into(), "-p".into()];
        args.push(self.tls_port.to_string());
        for (flag, file) in [
            ("--cafile", "ca.pem"),
            ("--cert", "cert.pem"),
            ("--key", "key.pem"),
        ] {
            args.extend([flag.into(), path_str(&dir.join(file))]);
        }
        args
    }

    /// `mosquitto_pub` over the plaintext listener as `user`, with `extra` arguments.
    pub fn publish_plain(&self, user: &str, extra: &[&str]) -> Output {
        mosquitto("mosquitto_pub", &with_extra(self.plain_args(user), extra))
    }

    /// `mosquitto_sub` over the plaintext listener as `user`, with `extra` arguments
    /// (which should bound it: `-C`, `-W`).
    pub fn subscribe_plain(&self, user: &str, extra: &[&str]) -> Output {
        mosquitto("mosquitto_sub", &with_extra(self.plain_args(user), extra))
    }

    /// A background `mosquitto_sub` over the plaintext listener as `user`.
    pub fn sub_plain(&self, user: &str, extra: &[&str]) -> Sub {
        Sub::start(&with_extra(self.plain_args(user), extra))
    }

    /// A background `mosquitto_sub` over the plaintext listener as `user`, returned
    /// once the broker has acknowledged the subscription (see `Sub::start_subscribed`).
    pub fn sub_plain_subscribed(&self, user: &str, extra: &[&str]) -> Sub {
        Sub::start_subscribed(&with_extra(self.plain_args(user), extra))
    }

    /// Runs a Python script over TLS, bounded by `limit`; the script gets the TLS port,
    /// the CA file, the test password and then `extra` as `sys.argv[1..]`.
    pub fn python_tls(&self, script: &str, extra: &[&str], limit: Duration) -> Output {
        let tls_port = self.tls_port.to_string();
        let ca = path_str(&self.ca());
        run_bounded(
            Command::new("python3")
                .args(["-c", script, &tls_port, &ca, PASSWORD])
                .args(extra),
            limit,
        )
    }
}

/// `-h 127.0.0.1 -p PORT -u USER -P PASSWORD`.
pub fn login_args(port: u16, user: &str) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-u".into(),
        user.into(),
        "-P".into(),
        PASSWORD.into(),
    ]
}

/// `args` followed by `extra`.
pub fn with_extra(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs a mosquitto client (`mosquitto_pub` or `mosquitto_sub`), bounded by 10 s.
pub fn mosquitto(tool: &str, args: &[String]) -> Output {
    run_bounded(Command::new(tool).args(args), Duration::from_secs(10))
}

impl Drop for Moat {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command with a time bound, returning its output.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `mosquitto_sub` in the background; `collect` returns what it printed.
pub struct Sub {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Sub {
    pub fn start(args: &[String]) -> Sub {
        Self::spawn(Command::new("mosquitto_sub").args(args))
    }

    /// Like `start`, with stdout line-buffered (`stdbuf -oL`), so `-d` debug lines such
    /// as "received SUBACK" arrive as they are printed, not when the buffer fills.
    pub fn start_line_buffered(args: &[String]) -> Sub {
        Self::spawn(
            Command::new("stdbuf")
                .args(["-oL", "mosquitto_sub"])
                .args(args),
        )
    }

    fn spawn(cmd: &mut Command) -> Sub {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub starts");
        let out = Arc::new(Mutex::new(String::new()));
        collect_lines(child.stdout.take().unwrap(), Arc::clone(&out));
        Sub { child, out }
    }

    /// Starts `mosquitto_sub -d` and returns once the broker has acknowledged the
    /// subscription, instead of sleeping for it: under emulation (`.ci/aarch64`) or a
    /// loaded machine a fixed sleep can end first and the message is lost. The client's
    /// debug lines ("Client ID received SUBACK", "Subscribed (mid: 1): 0", as printed by
    /// mosquitto's client/sub_client.c) are kept out of `output`. They go through
    /// stdio without a flush, so `stdbuf -oL` (coreutils, which then execs the client)
    /// makes them line-buffered; otherwise they would sit in the buffer until a message.
    pub fn start_subscribed(args: &[String]) -> Sub {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(args)
            .arg("-d")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub starts");
        let out = Arc::new(Mutex::new(String::new()));
        let debug = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let (messages, log) = (Arc::clone(&out), Arc::clone(&debug));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let is_debug = line.starts_with("Client ") || line.starts_with("Subscribed (mid:");
                let mut text = if is_debug { &log } else { &messages }.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let sub = Sub { child, out };
        if !wait_for_text(&debug, "received SUBACK", Duration::from_secs(30)) {
            panic!(
                "no SUBACK for mosquitto_sub {args:?}:\n{}",
                debug.lock().unwrap()
            );
        }
        sub
    }

    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle` (or the time is up).
    pub fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        wait_for_text(&self.out, needle, limit)
    }

    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.output()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends each line `reader` yields to `sink`, on a thread of its own.
pub fn collect_lines(reader: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
}

/// Waits (bounded) until `text` contains `needle`.
pub fn wait_for_text(text: &Mutex<String>, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if text.lock().unwrap().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A moat with all four MQTT listeners on free loopback ports (TLS, plain, WebSocket,
/// WebSocket over TLS) and the given `users:` block (`{hash}` is replaced by the
/// test password's hash). Returns the broker and its `[plain, ws, wss]` ports.
pub fn start_all_transports(users: &str) -> (Moat, [u16; 3]) {
    let [tls, plain, ws, wss] = free_ports();
    let dir = tempfile::tempdir().unwrap();
    let users = users.replace("{hash}", &password_hash());
    let manifest = format!(
        r#"version: 1
broker:
  hostnames: [moat.test]
  listen:
    tls: {{ address: "127.0.0.1", port: {tls} }}
    plain: {{ address: "127.0.0.1", port: {plain} }}
    ws: {{ address: "127.0.0.1", port: {ws} }}
    wss: {{ address: "127.0.0.1", port: {wss} }}
  networks: [loopback]
users:
{users}"#
    );
    std::fs::write(dir.path().join("moat.yaml"), manifest).unwrap();
    (Moat::start_in(dir, tls, Some(plain)), [plain, ws, wss])
}
