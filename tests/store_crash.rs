//! Crash and damage tests of the durable store, against a real SQLite file.
//!
//! - `acknowledged_writes_survive_sigkill`: a child process (this test binary re-run
//!   as `writer_role`) writes numbered retained and queued messages with durability
//!   `Full` and prints each number after its commit resolved; the parent SIGKILLs it
//!   at random moments, reopens the store and checks that every printed number is
//!   there.
//! - `damaged_files_are_moved_aside`: truncated, zeroed and garbage database files.
//! - `store_bench` (ignored; run by hand): bytes written per commit and throughput of
//!   `Full`, `Batched` and in-memory, for docs/durability.md.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat::store::{Durability, Op, Store, StoredMessage, StoredRetained, StoredSession};

const DB_ENV: &str = "MOAT_STORE_CRASH_DB";
const BASE_ENV: &str = "MOAT_STORE_CRASH_BASE";
const CLIENT: &str = "crash-client";
const KILLS: u64 = 24;

fn message(topic: String, n: u64) -> StoredMessage {
    StoredMessage {
        topic,
        payload: Bytes::from(format!("{{\"n\":{n},\"temperature\":21.5}}")),
        qos: 1,
        retain: false,
        properties: Vec::new(),
        expires_in_secs: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Small deterministic PRNG (xorshift64*), seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("crash test seed: {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The child's role: does nothing unless run by `acknowledged_writes_survive_sigkill`.
/// Eight writers, each number is one retained message and one queued message,
/// printed only after both commits resolved.
#[test]
fn writer_role() {
    let (Ok(db), Ok(base)) = (std::env::var(DB_ENV), std::env::var(BASE_ENV)) else {
        return;
    };
    let base: u64 = base.parse().unwrap();
    runtime().block_on(async move {
        let (store, _) = Store::open(Path::new(&db), Durability::Full).unwrap();
        let store = Arc::new(store);
        let session = StoredSession {
            client_id: CLIENT.into(),
            owner: "crash".into(),
            expiry_secs: u32::MAX,
        };
        store.apply(Op::PutSession(session)).await.unwrap();
        let next = Arc::new(AtomicU64::new(base));
        let deadline = Instant::now() + Duration::from_secs(20);
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (store, next) = (Arc::clone(&store), Arc::clone(&next));
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let retained = StoredRetained {
                            publisher: "crash".into(),
                            message: message(format!("crash/{n}"), n),
                        };
                        let put = store.reserve().await.unwrap().put_retained(retained);
                        let slot = store.reserve().await.unwrap();
                        let queued = slot.enqueue(CLIENT, n, message("q".into(), n));
                        put.await.unwrap();
                        queued.await.unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK {n}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
}

/// Runs one child until it is killed after `delay`; returns the numbers it printed.
fn run_child_and_kill(db: &Path, base: u64, delay: Duration) -> Vec<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "writer_role", "--nocapture", "--test-threads=1"])
        .env(DB_ENV, db)
        .env(BASE_ENV, base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| line.strip_prefix("ACK ").and_then(|n| n.parse().ok()))
            .collect::<Vec<u64>>()
    });
    std::thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("moat.db");
    let runtime = runtime();
    let mut rng = Rng::from_clock();
    let mut acknowledged: Vec<u64> = Vec::new();
    let mut acked_rounds = 0;

    for round in 0..KILLS {
        let delay = Duration::from_millis(30 + rng.below(400));
        let acks = run_child_and_kill(&db, round * 10_000_000, delay);
        acked_rounds += u64::from(!acks.is_empty());
        acknowledged.extend(acks);

        let (store, recovery) = Store::open(&db, Durability::Full).unwrap();
        assert!(
            recovery.is_clean(),
            "round {round}: a kill damaged the database: {recovery:?}"
        );
        let snapshot = store.load().unwrap();
        let retained: HashSet<u64> = snapshot
            .retained
            .iter()
            .filter_map(|r| r.message.topic.strip_prefix("crash/")?.parse().ok())
            .collect();
        let queued: HashSet<u64> = snapshot
            .queued
            .iter()
            .filter(|q| q.client_id == CLIENT)
            .map(|q| q.seq)
            .collect();
        let lost_retained: Vec<_> = acknowledged
            .iter()
            .filter(|n| !retained.contains(n))
            .collect();
        let lost_queued: Vec<_> = acknowledged
            .iter()
            .filter(|n| !queued.contains(n))
            .collect();
        assert!(
            lost_retained.is_empty() && lost_queued.is_empty(),
            "round {round} (killed after {delay:?}): acknowledged but lost: \
             retained {lost_retained:?}, queued {lost_queued:?}"
        );
        runtime.block_on(store.close()).unwrap();
    }
    eprintln!(
        "{KILLS} SIGKILLs, {} acknowledged numbers (x2 ops) all present, {:?}",
        acknowledged.len(),
        started.elapsed()
    );
    assert!(
        acked_rounds >= KILLS / 2,
        "too few rounds wrote anything ({acked_rounds}): the test proves nothing"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// A store with some retained messages, closed (so everything is in the main file).
fn populated_store(dir: &Path, runtime: &tokio::runtime::Runtime) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("moat.db");
    let (store, _) = Store::open(&path, Durability::Full).unwrap();
    runtime.block_on(async {
        for n in 0..60 {
            let mut m = message(format!("home/{n}"), n);
            m.payload = Bytes::from(vec![b'x'; 1024]);
            let retained = StoredRetained {
                publisher: "p".into(),
                message: m,
            };
            store.apply(Op::PutRetained(retained)).await.unwrap();
        }
        store.close().await.unwrap();
    });
    assert!(!dir.join("moat.db-wal").exists(), "checkpointed on close");
    path
}

#[test]
fn damaged_files_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let mut rng = Rng::from_clock();
    type Damage = fn(&[u8], &mut Rng) -> Vec<u8>;
    let damages: [(&str, Damage); 3] = [
        ("truncated", |good, _| good[..good.len() / 2].to_vec()),
        ("zeroed", |good, _| vec![0; good.len()]),
        ("garbage", |good, rng| {
            (0..good.len()).map(|_| rng.below(256) as u8).collect()
        }),
    ];
    for (name, damage) in damages {
        let path = populated_store(&dir.path().join(name), &runtime);
        let good = std::fs::read(&path).unwrap();
        let damaged = damage(&good, &mut rng);
        std::fs::write(&path, &damaged).unwrap();

        let (store, recovery) = Store::open(&path, Durability::Full).unwrap();
        let aside = recovery
            .moved_aside
            .clone()
            .unwrap_or_else(|| panic!("{name}: not detected"));
        let aside_name = aside.file_name().unwrap().to_string_lossy().into_owned();
        assert!(aside_name.starts_with("moat.db.damaged-"), "{aside_name}");
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            damaged,
            "{name}: kept as found"
        );
        eprintln!("{name}: moved aside ({})", recovery.reason.unwrap());

        // The fresh store is empty and works.
        assert!(store.load().unwrap().retained.is_empty());
        runtime.block_on(async {
            let retained = StoredRetained {
                publisher: "p".into(),
                message: message("after/recovery".into(), 1),
            };
            store.apply(Op::PutRetained(retained)).await.unwrap();
            store.close().await.unwrap();
        });
        let (store, recovery) = Store::open(&path, Durability::Full).unwrap();
        assert!(recovery.is_clean());
        assert_eq!(store.load().unwrap().retained.len(), 1);
        runtime.block_on(store.close()).unwrap();
    }
}

/// Bytes this process has caused to be written to storage (`/proc/self/io`).
fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct Run {
    ops: u64,
    elapsed: Duration,
    bytes: u64,
    commits: u64,
    fsyncs: u64,
}

impl Run {
    fn print(&self, name: &str) {
        println!(
            "{name:<34} {:>6} ops {:>9.0} ops/s {:>8} commits {:>6} fsyncs {:>8.0} B/op",
            self.ops,
            self.ops as f64 / self.elapsed.as_secs_f64(),
            self.commits,
            self.fsyncs,
            self.bytes as f64 / self.ops as f64,
        );
    }
}

/// `ops` enqueues of a 100-byte QoS 1 message spread over `clients` concurrent
/// tasks, each awaiting its commit before the next (as a publisher awaits PUBACK).
fn measure(store: Store, ops: u64, clients: u64, runtime: &tokio::runtime::Runtime) -> Run {
    let store = Arc::new(store);
    let bytes_before = write_bytes();
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..ops / clients {
                        let mut m = message(format!("bench/{c}"), i);
                        m.payload = Bytes::from(vec![b'v'; 100]);
                        let slot = store.reserve().await.unwrap();
                        slot.enqueue(format!("client-{c}"), i, m).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        store.flush().await.unwrap();
    });
    let elapsed = started.elapsed();
    let stats = store.stats();
    runtime.block_on(store.close()).unwrap();
    Run {
        ops: stats.ops,
        elapsed,
        bytes: write_bytes() - bytes_before,
        commits: stats.commits,
        fsyncs: stats.fsyncs,
    }
}

#[test]
#[ignore = "benchmark: cargo test --release -- --ignored store_bench --nocapture"]
fn store_bench() {
    let runtime = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = |name: &str, durability| Store::open(&dir.path().join(name), durability).unwrap().0;
    let batched = |ms| Durability::Batched {
        commit_interval: Duration::from_millis(ms),
    };
    println!("store_bench in {}", dir.path().display());
    println!("-- one client, each message committed before the next (bytes per commit)");
    measure(file("seq-full.db", Durability::Full), 1000, 1, &runtime).print("full, 1 client");
    let memory = Store::open_in_memory(Durability::Full).unwrap();
    measure(memory, 1000, 1, &runtime).print("in-memory, 1 client");
    println!("-- 64 concurrent clients, 20000 messages (throughput)");
    let memory = Store::open_in_memory(Durability::Full).unwrap();
    measure(memory, 20_000, 64, &runtime).print("in-memory, 64 clients");
    measure(file("par-full.db", Durability::Full), 20_000, 64, &runtime).print("full, 64 clients");
    measure(file("par-b10.db", batched(10)), 20_000, 64, &runtime)
        .print("batched 10 ms, 64 clients");
    measure(file("par-b100.db", batched(100)), 20_000, 64, &runtime)
        .print("batched 100 ms, 64 clients");
}
