//! `moat firstboot --boot DIR`: the appliance's boot-time import from the SD card
//! (restore a backup, import and scrub `moat.yaml`, provision, write the CA and the
//! setup report to the card). Exit 0 when done, 1 when something needs the user.
//! The work is `crate::firstboot`.

use anyhow::Context;

use crate::cli::{FirstbootArgs, GlobalArgs};
use crate::commands::{EXIT_FINDING, EXIT_OK};
use crate::firstboot::{self, CARD_CA, CARD_SETUP, Import, Paths};
use crate::manifest::ManifestError;

pub fn run(global: &GlobalArgs, args: &FirstbootArgs) -> anyhow::Result<u8> {
    let paths = Paths {
        boot: args.boot.clone(),
        state: global.state.clone(),
        manifest: global.manifest.clone(),
    };
    let report = match firstboot::run(&paths) {
        Ok(report) => report,
        Err(firstboot::FirstbootError::Manifest(e @ ManifestError::Invalid { .. })) => {
            eprintln!("{e}");
            return Ok(EXIT_FINDING);
        }
        Err(e) => return Err(e).context("moat firstboot"),
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if let Some(restored) = &report.restored {
            println!(
                "restored {} files from the card's backup into {}; the archive was overwritten and deleted",
                restored.files,
                restored.state.display()
            );
        }
        match &report.import {
            Import::NothingOnCard => println!(
                "no moat.yaml on the card; using {}",
                paths.manifest.display()
            ),
            Import::AlreadyImported => {
                println!("moat.yaml on the card was imported before; nothing to import")
            }
            Import::Imported { hashed, installed } => {
                if !hashed.is_empty() {
                    println!(
                        "hashed the plaintext passwords of {} and scrubbed them from the card",
                        hashed.join(", ")
                    );
                }
                if *installed {
                    println!("installed the manifest at {}", paths.manifest.display());
                }
            }
        }
        for warning in &report.warnings {
            eprintln!("{warning}");
        }
        print!("{}", report.provisioned);
        if report.ca_written {
            println!("wrote {CARD_CA} to the card");
        }
        if report.setup_written {
            println!("wrote {CARD_SETUP} to the card");
        }
        println!("CA SHA-256 fingerprint: {}", report.ca_fingerprint_sha256);
        if report.changed_nothing() {
            println!("nothing changed");
        }
    }
    for refusal in &report.refusals {
        eprintln!("moat: {refusal}");
    }
    Ok(if report.refusals.is_empty() {
        EXIT_OK
    } else {
        EXIT_FINDING
    })
}
