//! The host's network, disk, file-handle and socket series through the binary: collected
//! every round into the store, answered by `tandem query` with PromQL written as for
//! node_exporter (`node_` read as `tandem_host_`), and described by `/api/v1/metadata`.

use super::support::*;
use crate::{app_service, prom};

/// The series of an instant `tandem query` as (labels, value).
fn query(p: &Project, expr: &str) -> Vec<(serde_json::Value, f64)> {
    let out = p.run(&["query", expr, "--output", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("query json: {e}\n{}", out.stdout));
    v["result"]
        .as_array()
        .unwrap_or_else(|| panic!("no result in {v}"))
        .iter()
        .map(|s| {
            let value = s["value"][1].as_str().unwrap().parse().unwrap();
            (s["metric"].clone(), value)
        })
        .collect()
}

#[test]
fn host_network_disk_file_handle_and_socket_series_answer_promql() {
    let web = free_port();
    let p = Project::new(&app_service("web", web, ""));
    p.up().ok();

    // Requests through the proxy run over loopback, so its receive rate becomes positive.
    let lo = "rate(tandem_host_network_receive_bytes_total{device=\"lo\"}[5s])";
    let (labels, _) = eventually("a positive receive rate on lo", || {
        http_get(web, "/hello").ok()?;
        query(&p, lo).into_iter().find(|(_, v)| *v > 0.0)
    });
    assert_eq!(labels["env"], "dev", "{labels}");
    assert!(labels["instance"].is_string(), "{labels}");
    // Every interface of /proc/net/dev, each with its transmit side too (polled: an
    // interface another program adds shows up from the next round).
    eventually("every interface of /proc/net/dev", || {
        let devices: Vec<String> = query(&p, "tandem_host_network_transmit_bytes_total")
            .iter()
            .map(|(l, _)| l["device"].as_str().unwrap().to_string())
            .collect();
        let proc_net_dev = std::fs::read_to_string("/proc/net/dev").unwrap();
        let mut names = proc_net_dev
            .lines()
            .skip(2)
            .filter_map(|l| Some(l.rsplit_once(':')?.0.trim()));
        names
            .all(|name| devices.iter().any(|d| d == name))
            .then_some(())
    });

    let one = |expr: &str| -> f64 {
        let got = query(&p, expr);
        assert_eq!(got.len(), 1, "{expr}: {got:?}");
        got[0].1
    };
    let allocated = one("tandem_host_filefd_allocated");
    assert!(allocated > 0.0 && allocated <= one("tandem_host_filefd_maximum"));
    // The server's own listener is an IPv4 TCP socket in use.
    assert!(one("tandem_host_sockstat_TCP_inuse") >= 1.0);
    assert!(one("tandem_host_sockstat_sockets_used") >= 1.0);
    one("tandem_host_sockstat_TCP_tw");

    // Disk I/O of whole disks; this machine has one unless it lists only virtual devices.
    let diskstats = std::fs::read_to_string("/proc/diskstats").unwrap();
    let has_disk = diskstats.lines().any(|l| {
        let name = l.split_whitespace().nth(2).unwrap_or("");
        !["loop", "ram", "zram", "fd"]
            .iter()
            .any(|virtual_dev| name.starts_with(virtual_dev))
    });
    if has_disk {
        let utilisation = query(&p, "rate(tandem_host_disk_io_time_seconds_total[5s])");
        assert!(!utilisation.is_empty());
        for (labels, v) in &utilisation {
            let device = labels["device"].as_str().unwrap();
            assert!(!device.starts_with("loop"), "{device}");
            assert!(*v >= 0.0, "{device}: {v}");
        }
    }

    // Grafana's autocompletion reads the type and help of each.
    let api: u16 = p
        .status()
        .server
        .listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for (name, kind) in [
        ("tandem_host_network_receive_bytes_total", "counter"),
        ("tandem_host_network_transmit_drop_total", "counter"),
        ("tandem_host_disk_written_bytes_total", "counter"),
        ("tandem_host_disk_io_now", "gauge"),
        ("tandem_host_filefd_maximum", "gauge"),
        ("tandem_host_sockstat_TCP_inuse", "gauge"),
    ] {
        let (status, meta) = prom(api, "GET", &format!("/api/v1/metadata?metric={name}"), None);
        assert_eq!(status, 200);
        assert_eq!(meta["data"][name][0]["type"], kind, "{name}: {meta}");
        assert!(meta["data"][name][0]["help"].is_string(), "{name}: {meta}");
    }
}
