//! Hands a rendered ruleset to the `nft` binary on stdin, to check (`nft -c -f -`) or to
//! load (`nft -f -`), and reads moat's loaded table back (`nft list table inet moat`). `nft -f` loads a file as one transaction, so a rejected ruleset
//! leaves the running one untouched.

use std::ffi::OsString;
use std::io::Write as _;
use std::process::{Command, Stdio};

use super::FirewallError;

/// How to invoke `nft`: the program and any leading arguments, e.g. a wrapper such as
/// `ip netns exec NAME nft` in tests.
#[derive(Debug, Clone)]
pub struct Nft {
    program: OsString,
    leading_args: Vec<OsString>,
}

impl Default for Nft {
    /// `nft` from `PATH`.
    fn default() -> Self {
        Self {
            program: "nft".into(),
            leading_args: Vec::new(),
        }
    }
}

impl Nft {
    /// Runs `program leading_args... <nft arguments>`, for wrappers around `nft`.
    pub fn wrapped(
        program: impl Into<OsString>,
        leading_args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Self {
            program: program.into(),
            leading_args: leading_args.into_iter().map(Into::into).collect(),
        }
    }

    /// Validates `ruleset` with the kernel without loading it (`nft -c -f -`).
    pub fn check(&self, ruleset: &str) -> Result<(), FirewallError> {
        self.run(&["-c", "-f", "-"], ruleset)
    }

    /// Loads `ruleset` atomically (`nft -f -`).
    pub fn apply(&self, ruleset: &str) -> Result<(), FirewallError> {
        self.run(&["-f", "-"], ruleset)
    }

    /// Prints moat's table as loaded in the kernel (`nft list table inet moat`).
    pub fn list_table(&self) -> Result<String, FirewallError> {
        let program = self.display();
        let output = Command::new(&self.program)
            .args(&self.leading_args)
            .args(["list", "table", "inet", super::TABLE])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| FirewallError::Spawn {
                program: program.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(FirewallError::Rejected {
                program,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.leading_args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn run(&self, args: &[&str], ruleset: &str) -> Result<(), FirewallError> {
        let program = self.display();
        let mut child = Command::new(&self.program)
            .args(&self.leading_args)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FirewallError::Spawn {
                program: program.clone(),
                source,
            })?;
        let io_error = |source| FirewallError::Io {
            program: program.clone(),
            source,
        };
        // Write then drop stdin so nft sees end of file; the ruleset is a few KiB, far
        // below the pipe buffer, and stderr is drained by wait_with_output afterwards.
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ruleset.as_bytes()).map_err(io_error)?;
        }
        let output = child.wait_with_output().map_err(io_error)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(FirewallError::Rejected {
                program,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }
}

/// Validates `ruleset` with `nft -c -f -` (needs CAP_NET_ADMIN, like loading it).
pub fn check(ruleset: &str) -> Result<(), FirewallError> {
    Nft::default().check(ruleset)
}

/// Loads `ruleset` atomically with `nft -f -`.
pub fn apply(ruleset: &str) -> Result<(), FirewallError> {
    Nft::default().apply(ruleset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let nft = Nft::wrapped("/nonexistent/moat-test-nft", Vec::<OsString>::new());
        let err = nft.check("").unwrap_err();
        assert!(matches!(err, FirewallError::Spawn { .. }), "{err}");
    }

    #[test]
    fn a_failing_program_is_a_rejection_with_its_stderr() {
        // `sh -c 'cat >/dev/null; echo bad >&2; exit 3' nft -c -f -`: consumes stdin, fails.
        let nft = Nft::wrapped("sh", ["-c", "cat >/dev/null; echo bad ruleset >&2; exit 3"]);
        match nft.apply("table inet moat {}\n").unwrap_err() {
            FirewallError::Rejected { stderr, status, .. } => {
                assert_eq!(stderr, "bad ruleset");
                assert_eq!(status.code(), Some(3));
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn listing_runs_nft_list_table_inet_moat() {
        // The wrapper echoes its arguments, so the listing is the command line itself.
        let nft = Nft::wrapped("sh", ["-c", "echo \"$@\"", "nft"]);
        assert_eq!(nft.list_table().unwrap().trim(), "list table inet moat");
        let failing = Nft::wrapped("sh", ["-c", "echo 'No such file or directory' >&2; exit 1"]);
        assert!(matches!(
            failing.list_table().unwrap_err(),
            FirewallError::Rejected { stderr, .. } if stderr.contains("No such file")
        ));
    }

    #[test]
    fn the_ruleset_reaches_stdin() {
        // The wrapper succeeds only if it read exactly the ruleset on stdin.
        let nft = Nft::wrapped("sh", ["-c", "test \"$(cat)\" = 'table inet moat {}'"]);
        nft.check("table inet moat {}").unwrap();
        assert!(nft.check("something else").is_err());
    }
}
