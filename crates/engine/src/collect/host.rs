//! The host collector: what the machine as a whole is doing, read from `/proc` (and
//! `statvfs` for the data directory's file system) once per round.
//!
//! CPU by mode, memory, load, the data directory's space, and, with node_exporter's
//! semantics and names (`node_` becomes `tandem_host_`, so node_exporter's PromQL carries
//! over with that one change): network counters per interface (`/proc/net/dev`, loopback
//! included), disk I/O per block device (`/proc/diskstats`, partitions and virtual
//! devices left out by node_exporter's default `device-exclude`), the kernel's file
//! handles (`/proc/sys/fs/file-nr`) and the socket summary (`/proc/net/sockstat`,
//! `sockstat6`). Each file is read once per round into one buffer that lives as long as
//! the collector, and parsed in place: a round allocates only the label sets it returns.

use std::io::Read;
use std::path::Path;

/// Where a sample goes: metric name, one extra label, value.
pub(super) type Push<'a> = dyn FnMut(&str, Option<(&str, &str)>, f64) + 'a;

/// Reads the host's figures, reusing one read buffer across rounds.
#[derive(Debug, Default)]
pub(super) struct HostReader {
    buf: String,
}

impl HostReader {
    /// One round of host samples, handed to `push`. A file that cannot be read (a kernel
    /// without IPv6 has no `sockstat6`) gives no samples, and the collection loop marks
    /// its series stale.
    pub(super) fn collect(&mut self, data_dir: &Path, push: &mut Push<'_>) {
        if let Some(text) = read(&mut self.buf, "/proc/stat") {
            let ticks = tandem_supervisor::procfs::clock_ticks_per_second() as f64;
            for (mode, t) in parse_cpu(text) {
                push(
                    "tandem_host_cpu_seconds_total",
                    Some(("mode", mode)),
                    t / ticks,
                );
            }
        }
        if let Some((total, available)) =
            read(&mut self.buf, "/proc/meminfo").and_then(parse_meminfo)
        {
            push("tandem_host_memory_total_bytes", None, total as f64);
            push("tandem_host_memory_available_bytes", None, available as f64);
        }
        if let Some([l1, l5, l15]) = read(&mut self.buf, "/proc/loadavg").and_then(parse_loadavg) {
            push("tandem_host_load1", None, l1);
            push("tandem_host_load5", None, l5);
            push("tandem_host_load15", None, l15);
        }
        if let Some((size, free)) = filesystem_space(data_dir) {
            let path = data_dir.to_string_lossy();
            push(
                "tandem_host_data_dir_size_bytes",
                Some(("path", &path)),
                size as f64,
            );
            push(
                "tandem_host_data_dir_free_bytes",
                Some(("path", &path)),
                free as f64,
            );
        }
        if let Some(text) = read(&mut self.buf, "/proc/net/dev") {
            for dev in parse_net_dev(text) {
                for (name, field) in NET_SERIES {
                    push(name, Some(("device", dev.device)), dev.fields[field] as f64);
                }
            }
        }
        if let Some(text) = read(&mut self.buf, "/proc/diskstats") {
            for disk in parse_diskstats(text).filter(|d| !disk_excluded(d.device)) {
                for (name, field, scale) in DISK_SERIES {
                    push(
                        name,
                        Some(("device", disk.device)),
                        disk.fields[field] as f64 * scale,
                    );
                }
            }
        }
        if let Some((allocated, maximum)) =
            read(&mut self.buf, "/proc/sys/fs/file-nr").and_then(parse_file_nr)
        {
            push("tandem_host_filefd_allocated", None, allocated as f64);
            push("tandem_host_filefd_maximum", None, maximum as f64);
        }
        for path in ["/proc/net/sockstat", "/proc/net/sockstat6"] {
            if let Some(text) = read(&mut self.buf, path) {
                for (name, v) in parse_sockstat(text) {
                    push(name, None, v as f64);
                }
            }
        }
    }
}

/// Reads `path` into `buf` (its capacity is kept from round to round).
fn read<'b>(buf: &'b mut String, path: &str) -> Option<&'b str> {
    buf.clear();
    std::fs::File::open(path).ok()?.read_to_string(buf).ok()?;
    Some(buf.as_str())
}

const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// Clock ticks by mode from the first line of `/proc/stat`.
fn parse_cpu(text: &str) -> impl Iterator<Item = (&'static str, f64)> + '_ {
    let line = text.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
    CPU_MODES.into_iter().zip(
        line.split_ascii_whitespace()
            .skip(1)
            .map_while(|v| v.parse::<f64>().ok()),
    )
}

/// (MemTotal, MemAvailable) in bytes.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let (mut total, mut available) = (None, None);
    for line in text.lines() {
        let slot = if line.starts_with("MemTotal:") {
            &mut total
        } else if line.starts_with("MemAvailable:") {
            &mut available
        } else {
            continue;
        };
        *slot = line
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024);
        if total.is_some() && available.is_some() {
            break;
        }
    }
    Some((total?, available?))
}

fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut v = text.split_ascii_whitespace().map(|x| x.parse::<f64>().ok());
    Some([v.next()??, v.next()??, v.next()??])
}

/// (size, available) of the file system holding `path`, in bytes.
fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct we own from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

// === /proc/net/dev ===

/// The per-interface counters tandem stores: name, index in the line's 16 fields (receive:
/// bytes packets errs drop fifo frame compressed multicast, then transmit: bytes packets
/// errs drop fifo colls carrier compressed).
const NET_SERIES: [(&str, usize); 8] = [
    ("tandem_host_network_receive_bytes_total", 0),
    ("tandem_host_network_receive_packets_total", 1),
    ("tandem_host_network_receive_errs_total", 2),
    ("tandem_host_network_receive_drop_total", 3),
    ("tandem_host_network_transmit_bytes_total", 8),
    ("tandem_host_network_transmit_packets_total", 9),
    ("tandem_host_network_transmit_errs_total", 10),
    ("tandem_host_network_transmit_drop_total", 11),
];

#[derive(Debug, PartialEq)]
struct NetDev<'a> {
    device: &'a str,
    fields: [u64; 16],
}

/// Every interface line of `/proc/net/dev`. The name ends at the line's *last* colon, as
/// node_exporter reads it: the counters never hold one, an old alias name (`eth0:1`) can,
/// and older kernels print a wide counter right after the colon (`eth0:1234567`).
fn parse_net_dev(text: &str) -> impl Iterator<Item = NetDev<'_>> {
    text.lines().skip(2).filter_map(|line| {
        let (name, counters) = line.rsplit_once(':')?;
        let device = name.trim();
        let fields = fixed_fields::<16>(counters.split_ascii_whitespace(), 16)?;
        (!device.is_empty()).then_some(NetDev { device, fields })
    })
}

/// The first `N` numbers of `values`, or None when fewer than `min` of them parse.
fn fixed_fields<'a, const N: usize>(
    values: impl Iterator<Item = &'a str>,
    min: usize,
) -> Option<[u64; N]> {
    let mut fields = [0u64; N];
    let mut n = 0;
    for (slot, v) in fields.iter_mut().zip(values) {
        *slot = v.parse().ok()?;
        n += 1;
    }
    (n >= min).then_some(fields)
}

// === /proc/diskstats ===

/// The per-device figures tandem stores: name, index among the fields after the device
/// name, and the factor to node_exporter's unit. Sectors are always 512 bytes in
/// `/proc/diskstats`, whatever the device's own sector size; times are milliseconds.
const DISK_SERIES: [(&str, usize, f64); 8] = [
    ("tandem_host_disk_reads_completed_total", 0, 1.0),
    ("tandem_host_disk_read_bytes_total", 2, 512.0),
    ("tandem_host_disk_read_time_seconds_total", 3, 0.001),
    ("tandem_host_disk_writes_completed_total", 4, 1.0),
    ("tandem_host_disk_written_bytes_total", 6, 512.0),
    ("tandem_host_disk_write_time_seconds_total", 7, 0.001),
    ("tandem_host_disk_io_now", 8, 1.0),
    ("tandem_host_disk_io_time_seconds_total", 9, 0.001),
];

#[derive(Debug, PartialEq)]
struct DiskStats<'a> {
    device: &'a str,
    /// The first 11 figures, the ones every kernel since 2.6 prints for whole disks.
    /// Kernels 4.18+ add 4 discard fields and 5.5+ 2 flush fields; they are not read.
    fields: [u64; 11],
}

/// Every device line of `/proc/diskstats` with at least the 11 classic figures (the
/// 4-figure partition lines of 2.6.25-era kernels are left out).
fn parse_diskstats(text: &str) -> impl Iterator<Item = DiskStats<'_>> {
    text.lines().filter_map(|line| {
        let mut words = line.split_ascii_whitespace();
        let device = words.nth(2)?;
        let fields = fixed_fields::<11>(words, 11)?;
        Some(DiskStats { device, fields })
    })
}

/// node_exporter's default `--collector.diskstats.device-exclude`,
/// `^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`, without a regex engine: RAM
/// disks, zram, loop devices, floppies, and partitions of IDE/SCSI/virtio/Xen/NVMe disks.
/// Whole disks (`sda`, `nvme0n1`), device-mapper (`dm-0`), md RAID, optical drives
/// (`sr0`) and MMC partitions (`mmcblk0p1`) are kept, as node_exporter keeps them.
fn disk_excluded(device: &str) -> bool {
    // Every alternative ends in a non-digit, so `\d+$` is exactly the trailing digits.
    let prefix = device.trim_end_matches(|c: char| c.is_ascii_digit());
    if prefix.len() == device.len() {
        return false;
    }
    let b = prefix.as_bytes();
    let disk_letter =
        |rest: &[u8]| rest.len() == 2 && rest[0] == b'd' && rest[1].is_ascii_lowercase();
    match prefix {
        "ram" | "zram" | "loop" | "fd" => true,
        _ if b.len() == 3 && matches!(b[0], b'h' | b's' | b'v') => disk_letter(&b[1..]),
        _ if b.len() == 4 && b[0] == b'x' && b[1] == b'v' => disk_letter(&b[2..]),
        _ => prefix
            .strip_prefix("nvme")
            .and_then(|r| r.strip_suffix('p'))
            .and_then(|r| r.split_once('n'))
            .is_some_and(|(ctrl, ns)| all_digits(ctrl) && all_digits(ns)),
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
}

// === /proc/sys/fs/file-nr and /proc/net/sockstat ===

/// (allocated, maximum) file handles of the kernel: the first and third figure (the
/// second, free handles, is always 0 since Linux 2.6).
fn parse_file_nr(text: &str) -> Option<(u64, u64)> {
    let mut v = text.split_ascii_whitespace().map(|x| x.parse::<u64>().ok());
    let allocated = v.next()??;
    let _free = v.next()??;
    Some((allocated, v.next()??))
}

/// The socket figures tandem stores from `sockstat` and `sockstat6`, under node_exporter's
/// names (`node_sockstat_<PROTOCOL>_<field>`).
fn sockstat_name(protocol: &str, field: &str) -> Option<&'static str> {
    Some(match (protocol, field) {
        ("sockets", "used") => "tandem_host_sockstat_sockets_used",
        ("TCP", "inuse") => "tandem_host_sockstat_TCP_inuse",
        ("TCP", "orphan") => "tandem_host_sockstat_TCP_orphan",
        ("TCP", "tw") => "tandem_host_sockstat_TCP_tw",
        ("TCP", "alloc") => "tandem_host_sockstat_TCP_alloc",
        ("TCP6", "inuse") => "tandem_host_sockstat_TCP6_inuse",
        _ => return None,
    })
}

/// `PROTOCOL: field value field value ...` lines, the figures tandem stores.
fn parse_sockstat(text: &str) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .flat_map(|(protocol, rest)| {
            let mut words = rest.split_ascii_whitespace();
            std::iter::from_fn(move || Some((words.next()?, words.next()?))).filter_map(
                move |(field, v)| Some((sockstat_name(protocol, field)?, v.parse().ok()?)),
            )
        })
}

#[cfg(test)]
mod tests;
