//! A throwaway Linux guest for tests that must lose power: finds a Debian kernel and
//! its modules, packs an initramfs (newc cpio, written here so no `cpio` tool is
//! needed) with executables and the shared libraries `ldd` names, and runs
//! `qemu-system-x86_64` with its serial console collected. It knows nothing of MQTT
//! or moat; the caller supplies the `/init` script and the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A kernel image and the module tree built with it.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// Looks for a kernel, in this order: `MOAT_GUEST_KERNEL` (a vmlinuz; modules in
/// `MOAT_GUEST_MODULES`, else `<root>/lib/modules/<version>` beside its `boot/`),
/// a Debian `linux-image` package extracted under `extracted` (as
/// `tests/power_cut.sh` does), then the host's own `/boot/vmlinuz-*`.
pub fn find_kernel(extracted: &Path) -> Result<Kernel, String> {
    if let Ok(vmlinuz) = std::env::var("MOAT_GUEST_KERNEL") {
        let vmlinuz = PathBuf::from(vmlinuz);
        if !vmlinuz.is_file() {
            return Err(format!(
                "MOAT_GUEST_KERNEL={} is not a file",
                vmlinuz.display()
            ));
        }
        let modules = match std::env::var("MOAT_GUEST_MODULES") {
            Ok(dir) => PathBuf::from(dir),
            Err(_) => modules_beside(&vmlinuz)
                .ok_or_else(|| format!("no module tree beside {}", vmlinuz.display()))?,
        };
        return Ok(Kernel { vmlinuz, modules });
    }
    let mut tried = Vec::new();
    for root in [extracted.to_path_buf(), PathBuf::from("/")] {
        let boot = root.join("boot");
        tried.push(boot.display().to_string());
        let Ok(entries) = std::fs::read_dir(&boot) else {
            continue;
        };
        let mut images: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .collect();
        images.sort();
        if let Some(vmlinuz) = images.pop()
            && let Some(modules) = modules_beside(&vmlinuz)
        {
            return Ok(Kernel { vmlinuz, modules });
        }
    }
    Err(format!(
        "no kernel: set MOAT_GUEST_KERNEL, or run tests/power_cut.sh (it extracts Debian's linux-image-amd64), looked in {}",
        tried.join(", ")
    ))
}

/// `<root>/boot/vmlinuz-V` → `<root>/lib/modules/V` (or `usr/lib/modules/V`).
fn modules_beside(vmlinuz: &Path) -> Option<PathBuf> {
    let version = vmlinuz
        .file_name()?
        .to_string_lossy()
        .strip_prefix("vmlinuz-")?
        .to_owned();
    let root = vmlinuz.parent()?.parent()?;
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| root.join(dir).join(&version))
        .find(|p| p.join("kernel").is_dir())
}

/// The modules `wanted` and everything they depend on, in load order, as
/// `(name, module bytes)`. Modules built into the kernel (`modules.builtin`) are left
/// out. Dependencies come from each module's `depends=` modinfo string, so neither
/// `modules.dep` (written by depmod at install) nor kmod is needed.
pub fn kernel_modules(kernel: &Kernel, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut index = BTreeMap::new();
    index_modules(&kernel.modules.join("kernel"), &mut index);
    let builtin: BTreeSet<String> = std::fs::read_to_string(kernel.modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(module_name)
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(name, &index, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), String> {
    let name = module_name(name);
    if !seen.insert(name.clone()) || builtin.contains(&name) {
        return Ok(());
    }
    let path = index
        .get(&name)
        .ok_or_else(|| format!("kernel module {name} is neither a file nor built in"))?;
    let bytes = read_module(path)?;
    for dep in depends(&bytes) {
        visit(&dep, index, builtin, seen, order)?;
    }
    order.push((name, bytes));
    Ok(())
}

/// `virtio-rng.ko.xz` → `virtio_rng`: the kernel treats `-` and `_` alike.
fn module_name(file: &str) -> String {
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, index);
        } else if let Some(file) = path.file_name().map(|n| n.to_string_lossy().into_owned())
            && file.contains(".ko")
        {
            index.insert(module_name(&file), path);
        }
    }
}

/// A module's bytes, decompressed when the distribution ships `.ko.xz`/`.ko.zst`
/// (busybox `insmod` loads plain ELF only).
fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).map_err(|e| format!("{name}: {e}")),
        Some(tool) => Command::new(tool)
            .args(["-dc"])
            .arg(path)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| o.stdout)
            .ok_or_else(|| format!("{name}: cannot decompress with {tool}")),
    }
}

/// The `depends=a,b` string of a module's `.modinfo` section.
fn depends(module: &[u8]) -> Vec<String> {
    let key = b"depends=";
    module
        .windows(key.len())
        .enumerate()
        .find(|(i, w)| *w == key && (*i == 0 || module[i - 1] == 0))
        .map(|(i, _)| {
            let rest = &module[i + key.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst). Parent directories
/// are added on demand.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
    inode: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent(path);
        self.files.insert(path.trim_matches('/').to_owned());
        self.entry(path, S_IFREG | mode, (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.parent(path);
        self.entry(path, S_IFCHR | 0o600, (major, minor), &[]);
    }

    /// A host executable at `guest_path`, with every shared library `ldd` lists at
    /// the same path in the guest (a static binary needs none).
    pub fn executable(&mut self, host: &Path, guest_path: &str) -> Result<(), String> {
        let data = std::fs::read(host).map_err(|e| format!("{}: {e}", host.display()))?;
        self.file(guest_path, 0o755, &data);
        let ldd = Command::new("ldd")
            .arg(host)
            .output()
            .map_err(|e| format!("ldd: {e}"))?;
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .lines()
            .filter_map(|l| {
                // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
                // "/lib64/ld-linux-x86-64.so.2 (0x…)"; vdso lines have no path.
                let l = l.split(" (0x").next()?.trim();
                let path = l.rsplit("=> ").next()?.trim();
                path.starts_with('/').then(|| path.to_owned())
            })
        {
            let rel = lib.trim_start_matches('/').to_owned();
            if !self.files.contains(&rel) {
                let bytes = std::fs::read(&lib).map_err(|e| format!("{lib}: {e}"))?;
                self.file(&rel, 0o755, &bytes);
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.trim_matches('/').rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

/// How qemu runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Emulated, one host thread per virtual CPU.
    Tcg,
    /// Emulated, both virtual CPUs taking turns on one host thread. For guest
    /// kernels that patch their own code while running: Debian 13's 6.12, under
    /// qemu 7.2's multi-threaded TCG, once died at boot of an "Oops: int3" in
    /// `sched_clock_cpu` (a static key's breakpoint still executed by the other
    /// virtual CPU after the patch was done). On one thread no CPU runs stale code.
    TcgOneThread,
}

impl Accel {
    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg,thread=multi"],
            Accel::TcgOneThread => &["-accel", "tcg,thread=single"],
        }
    }
}

/// A running qemu; its serial console (and qemu's own messages) are collected.
pub struct Vm {
    child: Option<Child>,
    pub console: Arc<Mutex<String>>,
    pub booted: Instant,
}

impl Vm {
    /// Boots `kernel` with `initrd`; `extra` are device and network arguments.
    pub fn boot(kernel: &Kernel, initrd: &Path, accel: Accel, extra: &[String]) -> Vm {
        Vm::boot_with(kernel, initrd, accel, "", extra)
    }

    /// As `boot`, with `cmdline` added to the kernel's command line.
    pub fn boot_with(
        kernel: &Kernel,
        initrd: &Path,
        accel: Accel,
        cmdline: &str,
        extra: &[String],
    ) -> Vm {
        let mut child = Command::new("qemu-system-x86_64")
            .args(accel.args())
            .args(["-m", "1024", "-smp", "2", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            // no_timer_check: under TCG on a busy host the kernel's IO-APIC timer
            // check can fail and panic ("IO-APIC + timer doesn't work").
            .args([
                "-append",
                &format!("console=ttyS0 quiet panic=-1 no_timer_check {cmdline}"),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 starts");
        let console = Arc::new(Mutex::new(String::new()));
        super::collect_lines(child.stdout.take().expect("piped"), Arc::clone(&console));
        super::collect_lines(child.stderr.take().expect("piped"), Arc::clone(&console));
        Vm {
            child: Some(child),
            console,
            booted: Instant::now(),
        }
    }

    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Waits until the console shows `needle`; false when the time is up or qemu
    /// exited first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.console.lock().unwrap().contains(needle) {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                std::thread::sleep(Duration::from_millis(100));
                return self.console.lock().unwrap().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL to the qemu process: the guest's RAM, page cache included, is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
