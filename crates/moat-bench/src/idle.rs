//! Idle connections and the broker's memory: opens N logged-in connections (a
//! bounded number at a time), waits for the broker to settle, reads its VmRSS when
//! given its pid, announces on stderr that everything is open (so a driver script can
//! read the memory itself), holds, then says goodbye to every connection.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::Target;
use super::options::IdleArgs;
use super::report::{IdleResult, Measured, Report};
use super::system::rss_kib;
use super::{BenchError, joined, run_tag};

pub(crate) async fn run(args: &IdleArgs) -> Result<Report, BenchError> {
    let target = Target::from_args(&args.common)?;
    let tag = run_tag();
    target.warm_up().await?;
    let rss_before = args.broker_pid.map(rss_kib).transpose()?;

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.parallel));
    let mut tasks = JoinSet::new();
    for i in 0..args.connections {
        let target = target.clone();
        let gate = Arc::clone(&gate);
        let id = format!("bi-{tag}-{i}");
        tasks.spawn(async move {
            let _permit = gate
                .acquire_owned()
                .await
                .map_err(|e| BenchError::Task(e.to_string()))?;
            target.connect(&id, i).await
        });
    }
    let mut clients = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(outcome) = tasks.join_next().await {
        match joined(outcome) {
            Ok(client) => clients.push(client),
            Err(err) => {
                failed += 1;
                first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    let setup_secs = started.elapsed().as_secs_f64();

    tokio::time::sleep(args.settle).await;
    let rss_after = args.broker_pid.map(rss_kib).transpose()?;
    eprintln!(
        "moat-bench idle: {} connections open; holding for {:?}",
        clients.len(),
        args.hold
    );
    tokio::time::sleep(args.hold).await;

    let opened = clients.len();
    let gate = Arc::new(Semaphore::new(args.parallel.max(64)));
    let mut goodbyes = JoinSet::new();
    for client in clients {
        let gate = Arc::clone(&gate);
        goodbyes.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let _ = client.disconnect().await;
        });
    }
    while goodbyes.join_next().await.is_some() {}

    let kib_per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if opened > 0 => {
            Some((after as f64 - before as f64) / opened as f64)
        }
        _ => None,
    };
    Ok(Report {
        scenario: "idle",
        target: target.addr().to_string(),
        tls: target.is_tls(),
        protocol: target.protocol.level(),
        result: Measured::Idle(IdleResult {
            connections: args.connections,
            opened,
            failed,
            first_error,
            setup_secs,
            broker_pid: args.broker_pid,
            rss_before_kib: rss_before,
            rss_after_kib: rss_after,
            kib_per_connection,
        }),
    })
}
