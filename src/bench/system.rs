//! What the generator needs from the operating system: a higher open-files limit (up
//! to the hard limit) and a process's resident memory from `/proc/<pid>/status`.

use super::BenchError;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_open_files_limit() -> Result<u64, BenchError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| BenchError::Io(std::io::Error::from(e)))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| BenchError::Io(std::io::Error::from(e)))?;
    }
    Ok(hard.max(soft))
}

/// VmRSS of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|e| BenchError::Memory(format!("{path}: {e}")))?;
    parse_vm_rss(&status).ok_or_else(|| BenchError::Memory(format!("{path}: no VmRSS line")))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_of_a_status_file() {
        let status = "Name:\tmoat\nVmPeak:\t  9000 kB\nVmRSS:\t    6144 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(6144));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn reads_our_own_memory() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
