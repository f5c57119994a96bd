//! `moat import mosquitto CONF [--out PATH] [--force] [--root DIR] [--addon-options
//! FILE] [--tls-only] [--json]`: runs `crate::import`, writes the validated manifest
//! (never over an existing file without `--force`) and prints the report of what was
//! carried over with a change and what was not. A refused import writes nothing.

use std::io::Write;

use super::{EXIT_FINDING, EXIT_OK};
use crate::cli::{GlobalArgs, MosquittoImportArgs};
use crate::import::{self, Note, Options, Report};

pub fn mosquitto(global: &GlobalArgs, args: &MosquittoImportArgs) -> anyhow::Result<u8> {
    let out = args.out.as_ref().unwrap_or(&global.manifest);
    if !super::may_write(out, args.force) {
        return Ok(EXIT_FINDING);
    }
    let options = Options {
        root: args.root.clone(),
        addon_options: args.addon_options.clone(),
        tls_only: args.tls_only,
        manifest_name: out.display().to_string(),
    };
    let imported = match import::import(&args.conf, &options) {
        Ok(imported) => imported,
        Err(e) => {
            eprintln!("moat: import refused: {e}");
            return Ok(EXIT_FINDING);
        }
    };
    super::write_new(out, &imported.manifest, args.force)?;
    let mut stdout = std::io::stdout().lock();
    if global.json {
        let json = serde_json::json!({
            "manifest": out.display().to_string(),
            "report": imported.report,
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        write!(
            stdout,
            "{}",
            render(&out.display().to_string(), &imported.report)
        )?;
    }
    stdout.flush()?;
    Ok(EXIT_OK)
}

fn render(out: &str, report: &Report) -> String {
    let names = |kind: &str, list: &[String]| match list.len() {
        0 => format!("no {kind}s"),
        1 => format!("1 {kind} ({})", list[0]),
        n => format!("{n} {kind}s ({})", list.join(", ")),
    };
    let mut text = format!(
        "moat: wrote {out}: {}, {}\n",
        names("user", &report.users),
        names("device", &report.devices)
    );
    text.push_str(&format!("read: {}\n", report.files.join(", ")));
    for (title, notes) in [
        ("carried over with a change", &report.changed),
        ("NOT carried over", &report.not_carried),
    ] {
        if notes.is_empty() {
            continue;
        }
        text.push_str(&format!("\n{title} ({}):\n", notes.len()));
        for Note { at, item, reason } in notes {
            match at {
                Some(at) => text.push_str(&format!("  {at}: {item}\n      {reason}\n")),
                None => text.push_str(&format!("  {item}\n      {reason}\n")),
            }
        }
    }
    text.push_str(&format!(
        "\nnext: read the lists above, then `moat check --manifest {out}`, `moat provision` and `moat serve`\n"
    ));
    text
}
