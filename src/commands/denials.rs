//! `moat denials`: what the running broker refused (from `<state>/denials.json`),
//! most frequent first, each with the manifest line that would allow it. `--json`
//! prints the snapshot's entries with a `grant` field added.

use crate::cli::{DenialsArgs, GlobalArgs};
use crate::commands::EXIT_OK;
use crate::doctor::denials::grant_line;
use crate::policy::Policy;
use crate::server::denials_file;

pub fn run(global: &GlobalArgs, args: &DenialsArgs) -> anyhow::Result<u8> {
    let snapshot = denials_file::read(&global.state)?;
    // The counts are useful even when the manifest no longer loads: the grant lines
    // then assume `users.`.
    let policy = match Policy::load(&global.manifest) {
        Ok((policy, _)) => Some(policy),
        Err(e) => {
            eprintln!("moat: warning: {e}; grant lines assume `users.`");
            None
        }
    };
    let top: Vec<_> = snapshot.entries.iter().take(args.top).collect();
    if global.json {
        let entries: Vec<serde_json::Value> = top
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["grant"] = grant_line(policy.as_ref(), e).into();
                v
            })
            .collect();
        let out = serde_json::json!({
            "total": snapshot.total,
            "uncounted": snapshot.uncounted,
            "entries": entries,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(EXIT_OK);
    }
    println!(
        "{} refusal(s) since the broker started ({} not itemised: too many distinct topics)",
        snapshot.total, snapshot.uncounted
    );
    if top.is_empty() {
        return Ok(EXIT_OK);
    }
    println!(
        "\n{:>7}  {:<20} {:<17} {:<30} LAST",
        "COUNT", "IDENTITY", "KIND", "PATTERN"
    );
    for e in top {
        println!(
            "{:>7}  {:<20} {:<17} {:<30} {}",
            e.count,
            e.identity,
            e.kind.as_str(),
            e.pattern,
            e.example
        );
        println!("         allow with: {}", grant_line(policy.as_ref(), e));
    }
    Ok(EXIT_OK)
}
