//! `moat passwd NAME [--stdin] [--write]`: makes an argon2id hash for NAME from a
//! generated password (printed once) or one line of stdin. With `--write`, NAME's
//! credential line in the manifest is replaced in place, comments and layout kept, and
//! the result must validate before it atomically replaces the file.

use std::io::{BufRead, Read, Write};

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use super::{EXIT_FINDING, EXIT_OK};
use crate::auth::{generate_password, hash_password};
use crate::cli::{GlobalArgs, PasswdArgs};
use crate::manifest::{
    EditError, LoadOptions, ManifestError, parse_str, read_text, set_password_hash,
    write_atomically,
};

/// Longest password accepted on stdin.
const MAX_PASSWORD_BYTES: u64 = 1024;

pub fn run(global: &GlobalArgs, args: &PasswdArgs) -> anyhow::Result<u8> {
    let path = &global.manifest;
    let text = match read_text(path) {
        Ok(text) => Some(text),
        Err(ManifestError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && !args.write =>
        {
            None
        }
        Err(e) => {
            eprintln!("{e}");
            return Ok(EXIT_FINDING);
        }
    };
    // NAME must be a user or device of the manifest (when there is one).
    if let Some(text) = &text {
        if let Err(EditError::NotFound(_)) = set_password_hash(text, &args.name, "") {
            eprintln!(
                "moat: {}: no user or device named {:?}",
                path.display(),
                args.name
            );
            return Ok(EXIT_FINDING);
        }
    } else {
        eprintln!(
            "moat: note: {} does not exist; printing the hash only",
            path.display()
        );
    }
    let (password, generated) = if args.stdin {
        (read_password_line()?, false)
    } else {
        (
            Zeroizing::new(generate_password().context("generating a password")?),
            true,
        )
    };
    let hash = hash_password(password.as_bytes()).context("hashing the password")?;
    if args.write {
        let Some(text) = text else {
            bail!("{} does not exist", path.display());
        };
        let updated = match set_password_hash(&text, &args.name, &hash) {
            Ok(updated) => updated,
            Err(e) => {
                eprintln!("moat: {}: {e}", path.display());
                return Ok(EXIT_FINDING);
            }
        };
        if let Err(e) = parse_str(
            &updated,
            &path.display().to_string(),
            LoadOptions::default(),
        ) {
            eprintln!("{e}");
            eprintln!(
                "moat: the manifest would not be valid after the change; {} was not modified",
                path.display()
            );
            return Ok(EXIT_FINDING);
        }
        write_atomically(path, &updated).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "moat: updated the password_hash of {:?} in {}",
            args.name,
            path.display()
        );
    }
    let mut out = std::io::stdout().lock();
    if generated {
        eprintln!("moat: the password for {:?} is shown only now:", args.name);
        writeln!(out, "password: {}", password.as_str())?;
    }
    writeln!(out, "password_hash: \"{hash}\"")?;
    out.flush()?;
    Ok(EXIT_OK)
}

fn read_password_line() -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .take(MAX_PASSWORD_BYTES + 1)
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    if line.len() as u64 > MAX_PASSWORD_BYTES {
        bail!("the password on stdin is longer than {MAX_PASSWORD_BYTES} bytes");
    }
    let trimmed = line.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        bail!("no password on stdin (an empty password is not allowed)");
    }
    Ok(Zeroizing::new(trimmed.to_string()))
}
