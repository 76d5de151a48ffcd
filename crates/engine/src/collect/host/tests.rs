//! The host parsers on captured `/proc` text (odd cases included), and the network
//! counters on this machine's real loopback.

use super::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// A 6.x kernel with a bridge, a veth, a VLAN, a Wi-Fi card, an alias written `eth0:1` and
/// a receive counter wide enough to touch the colon (older kernels print it so).
const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 95636395068 634509367    0    0    0     0          0         0 95636395068 634509367    0    0    0     0       0          0
  eth0:194085392    9686    3    4    0     0          0         0   598789    6066    5    6    0     0       0          0
eth0:1:    100       2    0    0    0     0          0         0      200       3    0    0    0     0       0          0
br-1a2b3c4d:  7       1    0    0    0     0          0         0        8       1    0    0    0     0       0          0
veth9f8e7d6:  0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
vlan.100:     1       1    0    0    0     0          0         0        1       1    0    0    0     0       0          0
wlp3s0: 18446744073709551615 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0
 short: 1 2 3
";

#[test]
fn net_dev_names_end_at_the_last_colon_and_every_interface_is_kept() {
    let devs: Vec<NetDev<'_>> = parse_net_dev(NET_DEV).collect();
    let names: Vec<&str> = devs.iter().map(|d| d.device).collect();
    assert_eq!(
        names,
        [
            "lo",
            "eth0",
            "eth0:1",
            "br-1a2b3c4d",
            "veth9f8e7d6",
            "vlan.100",
            "wlp3s0"
        ],
        "a line with too few counters is the only one left out"
    );
    assert_eq!(devs[0].fields[0], 95_636_395_068);
    assert_eq!(devs[0].fields[9], 634_509_367);
    let eth0 = &devs[1];
    assert_eq!(
        [
            eth0.fields[0],
            eth0.fields[1],
            eth0.fields[2],
            eth0.fields[3]
        ],
        [194_085_392, 9686, 3, 4]
    );
    assert_eq!(
        [
            eth0.fields[8],
            eth0.fields[9],
            eth0.fields[10],
            eth0.fields[11]
        ],
        [598_789, 6066, 5, 6]
    );
    assert_eq!((devs[2].fields[0], devs[2].fields[8]), (100, 200));
    assert_eq!(devs[6].fields[0], u64::MAX);
}

#[test]
fn net_series_take_receive_and_transmit_from_their_own_columns() {
    let eth0 = parse_net_dev(NET_DEV).nth(1).unwrap();
    let got: Vec<(&str, u64)> = NET_SERIES
        .iter()
        .map(|(name, field)| (*name, eth0.fields[*field]))
        .collect();
    assert_eq!(
        got,
        [
            ("tandem_host_network_receive_bytes_total", 194_085_392),
            ("tandem_host_network_receive_packets_total", 9686),
            ("tandem_host_network_receive_errs_total", 3),
            ("tandem_host_network_receive_drop_total", 4),
            ("tandem_host_network_transmit_bytes_total", 598_789),
            ("tandem_host_network_transmit_packets_total", 6066),
            ("tandem_host_network_transmit_errs_total", 5),
            ("tandem_host_network_transmit_drop_total", 6),
        ]
    );
}

/// Lines of 4.18- (11 figures), 4.18+ (15: discards), 5.5+ (17: flushes) kernels, an old
/// 4-figure partition line, and devices node_exporter leaves out.
const DISKSTATS: &str = "\
   8       0 sda 1000 10 2048 400 500 20 4096 900 3 1200 1300
   8       1 sda1 900 9 1800 300 400 10 3000 800 0 1000 1100
 259       0 nvme0n1 2528608 79520 73392370 3001962 344276 371248 217895280 1024508 0 155064 4059329 169564 55 135268744 29008
 259       1 nvme0n1p1 1 2 3 4 5 6 7 8 0 9 10 0 0 0 0
 254       0 vda 2528608 79520 73392370 3001962 344276 371248 217895280 1024508 2 155064 4059329 169564 55 135268744 29008 50659 3850
 254       1 vda1 1 2 3 4 5 6 7 8 0 9 10 0 0 0 0 0 0
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   2       0 fd0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
  11       0 sr0 5 0 40 1 0 0 0 0 0 1 1 0 0 0 0 0 0
 253       1 dm-0 7 0 56 2 8 0 64 3 0 4 5 0 0 0 0 0 0
   9       0 md0 7 0 56 2 8 0 64 3 0 4 5 0 0 0 0 0 0
 179       0 mmcblk0 7 0 56 2 8 0 64 3 0 4 5 0 0 0 0 0 0
 179       1 mmcblk0p1 7 0 56 2 8 0 64 3 0 4 5 0 0 0 0 0 0
   3       2 hda2 4 16 5 32
";

#[test]
fn diskstats_keep_whole_disks_and_leave_out_what_node_exporter_leaves_out() {
    let kept: Vec<&str> = parse_diskstats(DISKSTATS)
        .filter(|d| !disk_excluded(d.device))
        .map(|d| d.device)
        .collect();
    assert_eq!(
        kept,
        [
            "sda",
            "nvme0n1",
            "vda",
            "sr0",
            "dm-0",
            "md0",
            "mmcblk0",
            "mmcblk0p1"
        ]
    );
    // The old 4-figure line is not read at all.
    assert!(parse_diskstats(DISKSTATS).all(|d| d.device != "hda2"));
}

#[test]
fn disk_exclusion_is_node_exporter_s_default_pattern() {
    // ^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$
    for excluded in [
        "ram0",
        "ram15",
        "zram0",
        "loop0",
        "loop12",
        "fd0",
        "sda1",
        "sdz9",
        "hdb2",
        "vda1",
        "vdb15",
        "xvda1",
        "nvme0n1p1",
        "nvme10n2p13",
    ] {
        assert!(disk_excluded(excluded), "{excluded} should be left out");
    }
    for kept in [
        "sda",
        "vdb",
        "xvda",
        "nvme0n1",
        "nvme0n1p",
        "sdaa1",
        "sr0",
        "dm-0",
        "md127",
        "mmcblk0",
        "mmcblk0p1",
        "nbd0",
        "ram",
        "zram",
        "loop",
        "xda1",
        "nvmen1p1",
        "nvme0p1",
        "Sda1",
    ] {
        assert!(!disk_excluded(kept), "{kept} should be kept");
    }
}

#[test]
fn disk_series_are_in_node_exporter_s_units() {
    let vda = parse_diskstats(DISKSTATS)
        .find(|d| d.device == "vda")
        .unwrap();
    let got: Vec<(&str, f64)> = DISK_SERIES
        .iter()
        .map(|(name, field, scale)| (*name, vda.fields[*field] as f64 * scale))
        .collect();
    assert_eq!(
        got,
        [
            ("tandem_host_disk_reads_completed_total", 2_528_608.0),
            ("tandem_host_disk_read_bytes_total", 73_392_370.0 * 512.0),
            ("tandem_host_disk_read_time_seconds_total", 3001.962),
            ("tandem_host_disk_writes_completed_total", 344_276.0),
            (
                "tandem_host_disk_written_bytes_total",
                217_895_280.0 * 512.0
            ),
            ("tandem_host_disk_write_time_seconds_total", 1024.508),
            ("tandem_host_disk_io_now", 2.0),
            ("tandem_host_disk_io_time_seconds_total", 155.064),
        ]
    );
}

#[test]
fn file_nr_gives_allocated_and_maximum() {
    assert_eq!(parse_file_nr("441\t0\t2466177\n"), Some((441, 2_466_177)));
    assert_eq!(
        parse_file_nr("9223372036854775807\t0\t9223372036854775807\n"),
        Some((i64::MAX as u64, i64::MAX as u64))
    );
    assert_eq!(parse_file_nr("441\t0\n"), None);
    assert_eq!(parse_file_nr(""), None);
}

#[test]
fn sockstat_gives_the_tcp_summary_under_node_exporter_s_names() {
    let sockstat = "\
sockets: used 312
TCP: inuse 17 orphan 2 tw 40 alloc 25 mem 9
UDP: inuse 3 mem 1
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
";
    let sockstat6 = "\
TCP6: inuse 5
UDP6: inuse 2
UDPLITE6: inuse 0
RAW6: inuse 1
FRAG6: inuse 0 memory 0
";
    assert_eq!(
        parse_sockstat(sockstat).collect::<Vec<_>>(),
        [
            ("tandem_host_sockstat_sockets_used", 312),
            ("tandem_host_sockstat_TCP_inuse", 17),
            ("tandem_host_sockstat_TCP_orphan", 2),
            ("tandem_host_sockstat_TCP_tw", 40),
            ("tandem_host_sockstat_TCP_alloc", 25),
        ]
    );
    assert_eq!(
        parse_sockstat(sockstat6).collect::<Vec<_>>(),
        [("tandem_host_sockstat_TCP6_inuse", 5)]
    );
}

#[test]
fn cpu_memory_and_load_parse() {
    let stat = "cpu  100 2 30 4000 5 0 6 7 0 0\ncpu0 50 1 15 2000 2 0 3 3 0 0\nintr 1\n";
    assert_eq!(
        parse_cpu(stat).collect::<Vec<_>>(),
        [
            ("user", 100.0),
            ("nice", 2.0),
            ("system", 30.0),
            ("idle", 4000.0),
            ("iowait", 5.0),
            ("irq", 0.0),
            ("softirq", 6.0),
            ("steal", 7.0),
        ]
    );
    let meminfo = "MemTotal:       16000 kB\nMemFree:         1000 kB\nMemAvailable:    8000 kB\n";
    assert_eq!(parse_meminfo(meminfo), Some((16000 * 1024, 8000 * 1024)));
    assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    assert_eq!(
        parse_loadavg("0.50 1.25 2.00 3/400 12345\n"),
        Some([0.5, 1.25, 2.0])
    );
}

/// The loopback's receive counter, as one round of the host collector reads it.
fn loopback_received(reader: &mut HostReader) -> f64 {
    let mut received = None;
    reader.collect(Path::new("/"), &mut |name, extra, v| {
        if name == "tandem_host_network_receive_bytes_total" && extra == Some(("device", "lo")) {
            received = Some(v);
        }
    });
    received.expect("lo in /proc/net/dev")
}

#[test]
fn loopback_bytes_grow_with_traffic_over_127_0_0_1() {
    let mut reader = HostReader::default();
    let before = loopback_received(&mut reader);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        std::io::copy(&mut conn, &mut std::io::sink()).unwrap()
    });
    const SENT: usize = 4 << 20;
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.write_all(&vec![7u8; SENT]).unwrap();
    drop(client);
    assert_eq!(sink.join().unwrap(), SENT as u64);
    // Other programs use loopback too, so the counter grows by at least what was sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let grown = loopback_received(&mut reader) - before;
        if grown >= SENT as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lo received {grown} more bytes after {SENT} were sent over 127.0.0.1"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
