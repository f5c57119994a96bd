//! A real `mosquitto` for end-to-end tests (Debian's binary): users made with
//! `mosquitto_passwd`, certificates made with `openssl`, and the broker process run
//! on a configuration the test writes. Used where mosquitto is the peer: the import
//! test compares logins against it, the bridge test uses it as the remote broker.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::collect_lines;

/// `mosquitto_passwd -b [-c] FILE USER PASS`, as a user would run it.
pub fn mosquitto_passwd(file: &Path, user: &str, password: &str, create: bool) {
    let mut cmd = Command::new("mosquitto_passwd");
    if create {
        cmd.arg("-c");
    }
    run_ok(cmd.arg("-b").arg(file).args([user, password]));
}

/// Runs a tool that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// A self-signed server certificate for the real mosquitto's TLS listener.
pub fn server_cert(dir: &Path) {
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
            ])
            .arg(dir.join("server.key"))
            .arg("-out")
            .arg(dir.join("server.pem")),
    );
}

/// A real `mosquitto -c CONF`, run from the configuration's directory (mosquitto
/// resolves relative paths against its working directory). Killed on drop.
pub struct RealMosquitto {
    child: Child,
    pub log: Arc<Mutex<String>>,
}

impl RealMosquitto {
    pub fn start(conf: &Path, port: u16) -> RealMosquitto {
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .current_dir(conf.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        collect_lines(child.stderr.take().unwrap(), Arc::clone(&log));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mosquitto exited ({status}):\n{}", log.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening sockets open before the TLS files are loaded: wait for "running".
        while !log.lock().unwrap().contains(" running") {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mosquitto exited ({status}):\n{}", log.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RealMosquitto { child, log }
    }
}

impl Drop for RealMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RealMosquitto {
    /// SIGTERM (mosquitto saves its persistence file), then waits for the exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test CA (`ca.pem`, `ca.key`) and a server certificate it signs for
/// `localhost` and 127.0.0.1 (`server.pem`, `server.key`), all in `dir`.
pub fn ca_and_server_cert(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "1", "-subj", "/CN=moat test remote CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.pem")),
    );
    run_ok(
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(dir.join("server.key"))
            .arg("-out")
            .arg(dir.join("server.csr")),
    );
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-in"])
            .arg(dir.join("server.csr"))
            .arg("-CA")
            .arg(dir.join("ca.pem"))
            .arg("-CAkey")
            .arg(dir.join("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(dir.join("server.pem")),
    );
}
