//! `moat backup OUTPUT` writes an archive of the state directory, the database and the
//! manifest; `moat backup --restore ARCHIVE` puts one back into an empty state
//! directory. The work is `crate::backup`; this prints what happened.

use anyhow::Context;

use crate::backup::{self, ManifestRestore};
use crate::cli::{BackupArgs, GlobalArgs};
use crate::commands::{EXIT_OK, EXIT_USAGE};

pub fn run(global: &GlobalArgs, args: &BackupArgs) -> anyhow::Result<u8> {
    if let Some(archive) = &args.restore {
        let report = backup::restore(archive, &global.state, &global.manifest)
            .with_context(|| format!("restoring {}", archive.display()))?;
        if global.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(EXIT_OK);
        }
        println!(
            "restored {} files into {}",
            report.files,
            report.state.display()
        );
        match &report.manifest {
            ManifestRestore::Restored(path) => {
                println!("restored the manifest to {}", path.display())
            }
            ManifestRestore::KeptExisting(path) => println!(
                "kept the existing manifest {} (the archive's copy was not restored)",
                path.display()
            ),
            ManifestRestore::NotInArchive => println!("the archive holds no manifest"),
        }
        if let Some(db) = &report.database {
            println!("restored the database to {}", db.display());
        }
        return Ok(EXIT_OK);
    }
    let Some(output) = &args.output else {
        eprintln!("moat: backup needs an OUTPUT archive or --restore ARCHIVE");
        return Ok(EXIT_USAGE);
    };
    let report = backup::backup(&global.state, &global.manifest, output)
        .with_context(|| format!("backing up {}", global.state.display()))?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(EXIT_OK);
    }
    for note in &report.notes {
        eprintln!("moat: note: {note}");
    }
    println!(
        "wrote {} ({} files{}{}); it holds private keys: keep it like a password",
        report.archive.display(),
        report.files,
        report
            .database
            .as_ref()
            .map(|d| format!(", database {}", d.display()))
            .unwrap_or_default(),
        report
            .manifest
            .as_ref()
            .map(|m| format!(", manifest {}", m.display()))
            .unwrap_or_default(),
    );
    Ok(EXIT_OK)
}
