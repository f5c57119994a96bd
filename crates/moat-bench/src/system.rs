//! What the generator needs from the operating system: a higher open-files limit (up
//! to the hard limit), a process's resident memory from `/proc/<pid>/status` and its
//! CPU time from `/proc/<pid>/stat`.

use super::BenchError;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub(crate) fn raise_open_files_limit() -> Result<u64, BenchError> {
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
pub(crate) fn rss_kib(pid: u32) -> Result<u64, BenchError> {
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

/// CPU time (user + system, all threads) process `pid` has used so far, in seconds:
/// fields 14 and 15 of `/proc/<pid>/stat` (proc(5)), in clock ticks.
pub(crate) fn cpu_secs(pid: u32) -> Result<f64, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).map_err(|e| BenchError::Cpu(format!("{path}: {e}")))?;
    let ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| BenchError::Cpu(format!("{path}: no utime/stime fields")))?;
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .ok_or_else(|| BenchError::Cpu("sysconf(_SC_CLK_TCK) gave no value".into()))?;
    Ok(ticks as f64 / per_sec as f64)
}

/// utime + stime from a stat line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so utime (14) is index 11.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_of_a_stat_line() {
        // A real line shape (proc(5)); the name holds a space and a parenthesis.
        let stat = "4242 (moat (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 317 45 0 0 20 0 3 0 1000 \
                    50000000 1500 18446744073709551615 0 0 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(362));
        assert_eq!(parse_cpu_ticks("4242 (moat) S 1"), None);
    }

    #[test]
    fn our_own_cpu_time_grows_while_we_spin() {
        let me = std::process::id();
        let before = cpu_secs(me).unwrap();
        // Spin (at most 5 s of wall time) until at least one clock tick is counted.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_secs(me).unwrap() <= before && start.elapsed().as_secs() < 5 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(
            cpu_secs(me).unwrap() > before,
            "no CPU time counted after {x} spins"
        );
    }

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
