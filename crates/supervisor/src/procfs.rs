//! Process facts read straight from `/proc`: start times that tell a live process from a
//! reused PID, and the memory, CPU and file-descriptor figures the runtime reports per
//! instance. Reading the files ourselves keeps this small and dependency-free (sysinfo
//! pins a toolchain and walks far more than we need); every reader returns `None` or an
//! empty result for a process that is gone or a file it cannot parse, never a panic.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

/// Memory, CPU and descriptor use of a process, or summed over a process group.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident set size.
    pub rss_bytes: u64,
    /// User plus system CPU time since the process started.
    pub cpu_seconds: f64,
    /// Entries in `/proc/PID/fd` (0 when that folder is not readable).
    pub open_fds: u64,
}

/// The fields of `/proc/PID/stat` this module uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
    utime: u64,
    stime: u64,
    start_ticks: u64,
    rss_pages: u64,
}

/// Parses one `/proc/PID/stat` line. The command name (field 2) sits in parentheses and
/// may itself contain spaces and parentheses, so the fixed fields are read after the
/// *last* `)`; field 3 (the state) is then the first word.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 of the man page, so field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
        rss_pages: field(24)?.parse().ok()?,
    })
}

fn read_stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Start time of a process in clock ticks after boot (field 22 of `/proc/PID/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    read_stat(pid).map(|s| s.start_ticks)
}

/// True when `pid` is a live process (not a zombie) that started at `start_ticks`, i.e.
/// the same process that was recorded, not a later one that reuses the number.
pub fn is_same_process(pid: i32, start_ticks: u64) -> bool {
    read_stat(pid)
        .is_some_and(|s| s.start_ticks == start_ticks && !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// Stats of one process, `None` when it is gone.
pub fn process_stats(pid: i32) -> Option<ProcessStats> {
    read_stat(pid).map(|stat| stats_of(pid, &stat))
}

/// Stats summed over every process whose process group is `pgid` (an instance's service
/// leads its own group, so this covers the children it forks too).
pub fn process_group_stats(pgid: i32) -> ProcessStats {
    let mut total = ProcessStats::default();
    for (pid, stat) in all_stats() {
        if stat.pgrp == pgid {
            let one = stats_of(pid, &stat);
            total.rss_bytes += one.rss_bytes;
            total.cpu_seconds += one.cpu_seconds;
            total.open_fds += one.open_fds;
        }
    }
    total
}

/// [`ProcessStats`] of every process group in one walk of `/proc` (a collector that reads
/// many instances each second walks it once, not once per instance).
pub fn all_group_stats() -> std::collections::HashMap<i32, ProcessStats> {
    let mut groups: std::collections::HashMap<i32, ProcessStats> = std::collections::HashMap::new();
    for (pid, stat) in all_stats() {
        let one = stats_of(pid, &stat);
        let total = groups.entry(stat.pgrp).or_default();
        total.rss_bytes += one.rss_bytes;
        total.cpu_seconds += one.cpu_seconds;
        total.open_fds += one.open_fds;
    }
    groups
}

/// Every process (zombies included) whose process group is `pgid`, in PID order.
pub fn pids_in_group(pgid: i32) -> Vec<i32> {
    let mut pids: Vec<i32> = all_stats()
        .filter(|(_, stat)| stat.pgrp == pgid)
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// Every process whose parent is `pid` (zombies included), in PID order.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut pids: Vec<i32> = all_stats()
        .filter(|(_, stat)| stat.ppid == pid)
        .map(|(child, _)| child)
        .collect();
    pids.sort_unstable();
    pids
}

/// `sysconf(_SC_CLK_TCK)`: the unit of the tick counts in `/proc/PID/stat` (almost always 100).
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    *TICKS.get_or_init(|| positive_or(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }, 100))
}

/// Boot time in milliseconds since the epoch (`btime` in `/proc/stat`), 0 when unreadable.
/// With [`start_ticks`] it gives a process's wall-clock start.
pub fn boot_time_ms() -> i64 {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return 0;
    };
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|secs| secs.trim().parse::<i64>().ok())
        .map_or(0, |secs| secs * 1000)
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    // SAFETY: as above, sysconf has no memory-safety preconditions.
    *PAGE.get_or_init(|| positive_or(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }, 4096))
}

fn positive_or(value: libc::c_long, fallback: u64) -> u64 {
    u64::try_from(value)
        .ok()
        .filter(|v| *v > 0)
        .unwrap_or(fallback)
}

fn stats_of(pid: i32, stat: &Stat) -> ProcessStats {
    let open_fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64);
    ProcessStats {
        rss_bytes: stat.rss_pages * page_size(),
        cpu_seconds: (stat.utime + stat.stime) as f64 / clock_ticks_per_second() as f64,
        open_fds,
    }
}

/// `(pid, stat)` for every process readable under `/proc`; processes that vanish while
/// the folder is walked are skipped.
fn all_stats() -> impl Iterator<Item = (i32, Stat)> {
    fs::read_dir(Path::new("/proc"))
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            Some((pid, read_stat(pid)?))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_after_the_last_parenthesis() {
        let line = "4242 (my (weird) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123456 1000000 250 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.pgrp, 4242);
        assert_eq!((stat.utime, stat.stime), (7, 3));
        assert_eq!(stat.start_ticks, 123456);
        assert_eq!(stat.rss_pages, 250);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S 1"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }
}
