//! A whole tandem server whose live revision has `[monitoring] remote_write` pointing at a
//! real Prometheus (Debian package, remote-write receiver on, free loopback port): what the
//! server collects and stores arrives in Prometheus with the same label sets and the same
//! values, bit for bit, at the same timestamps. The sender's retries, queue, refused and dead
//! targets are covered by the unit tests in `src/remote_write.rs`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tandem_api::Provenance;
use tandem_server::{DataDir, ServerConfig};
use tandem_spec::units::Dur;
use tandem_spec::{Monitoring, RemoteWrite, ServerSettings, System};

/// Series (label pairs, sorted) to their samples (ms, value bits).
type Series = BTreeMap<Vec<(String, String)>, BTreeMap<i64, u64>>;

/// A Prometheus that is killed when the test ends, however it ends.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// `None` (with the reason printed) when the binary is missing; `scripts/test` installs it.
    async fn start() -> Option<Prometheus> {
        if Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            println!(
                "skipped: the `prometheus` binary is not installed (apt-get install prometheus)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 15s\n").unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut prometheus = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited before it was ready: {status}");
            }
            if get(&ready).await.is_some_and(|(status, _)| status == 200) {
                return Some(prometheus);
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(url.parse().ok()?).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A range-vector query through a Prometheus-compatible API at `base` (Prometheus itself
/// or tandem's listener), evaluated at `time_ms`.
async fn range_query(base: &str, selector: &str, time_ms: i64) -> Series {
    let url = format!(
        "{base}/api/v1/query?query={}&time={}.{:03}",
        percent_encode(selector),
        time_ms / 1000,
        time_ms % 1000
    );
    let mut series = Series::new();
    let Some((200, body)) = get(&url).await else {
        return series;
    };
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    for item in answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let labels: Vec<(String, String)> = item["metric"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let samples = item["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                let t = (pair[0].as_f64().unwrap() * 1000.0).round() as i64;
                let v: f64 = pair[1].as_str().unwrap().parse().unwrap();
                (t, v.to_bits())
            })
            .collect();
        series.insert(labels, samples);
    }
    series
}

/// Makes a revision with `monitoring` live, as `tandem up` would have before this server.
fn seed_live_revision(dir: &DataDir, env: &str, monitoring: Monitoring) {
    dir.create().unwrap();
    let store = tandem_store::Store::open(&dir.store_file()).unwrap();
    let system = System {
        name: "remote-write-test".to_string(),
        env: env.to_string(),
        server: ServerSettings::default(),
        service: BTreeMap::new(),
        alert: Vec::new(),
        rule_files: Vec::new(),
        monitoring,
        receiver: Vec::new(),
        route: Vec::new(),
    };
    let provenance = Provenance {
        git_commit: None,
        git_dirty: false,
        author: "test".to_string(),
        message: None,
        file: "tandem.toml".to_string(),
    };
    let revision = store
        .begin_revision(env, &system, "test", &provenance)
        .unwrap();
    store.mark_live(env, revision.number).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sends_what_it_stores_to_prometheus() {
    let Some(prometheus) = Prometheus::start().await else {
        return;
    };
    let prometheus_base = format!("http://127.0.0.1:{}", prometheus.port);
    let data = tempfile::tempdir().unwrap();
    let dir = DataDir::new(data.path());
    seed_live_revision(
        &dir,
        "dev",
        Monitoring {
            remote_write: vec![RemoteWrite {
                url: format!("{prometheus_base}/api/v1/write"),
                timeout: Dur(Duration::from_secs(10)),
            }],
            ..Monitoring::default()
        },
    );
    // The server runs as a task of this test's runtime and ends with it.
    let server = tokio::spawn(tandem_server::run(ServerConfig {
        env: "dev".to_string(),
        data_dir: data.path().to_path_buf(),
        listen: Some("127.0.0.1:0".to_string()),
        shim_exe: "/bin/false".into(),
        version: "test".to_string(),
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        if let Some(record) = dir.read_record() {
            break record;
        }
        assert!(
            !server.is_finished(),
            "the server stopped: {:?}",
            server.await
        );
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tandem_base = format!("http://{}", record.listen);

    // Wait until Prometheus holds a few rounds of the host's memory.
    let host = "tandem_host_memory_total_bytes";
    let newest = loop {
        let got = range_query(&prometheus_base, &format!("{host}[1h]"), now_ms()).await;
        if let Some(newest) = got
            .values()
            .next()
            .filter(|samples| samples.len() >= 3)
            .and_then(|samples| samples.keys().last().copied())
        {
            break newest;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not receive three rounds of {host}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Everything Prometheus has up to then, tandem has too: same series, same timestamps,
    // same bits. And every series tandem stored by the first round Prometheus received
    // reached Prometheus.
    let selector = "{env=\"dev\"}[1h]";
    let in_prometheus = range_query(&prometheus_base, selector, newest).await;
    let in_tandem = range_query(&tandem_base, selector, newest).await;
    assert!(
        in_prometheus.keys().any(|labels| labels
            .iter()
            .any(|(k, v)| k == "__name__" && v == "tandem_host_cpu_seconds_total")),
        "{:?}",
        in_prometheus.keys()
    );
    for (labels, samples) in &in_prometheus {
        let ours = in_tandem
            .get(labels)
            .unwrap_or_else(|| panic!("Prometheus has {labels:?}, which tandem does not"));
        for (t, bits) in samples {
            assert_eq!(
                ours.get(t),
                Some(bits),
                "{labels:?} at {t}: tandem has {:?}, Prometheus {}",
                ours.get(t).map(|b| f64::from_bits(*b)),
                f64::from_bits(*bits)
            );
        }
    }
    let first_round = in_prometheus
        .values()
        .filter_map(|samples| samples.keys().next().copied())
        .min()
        .unwrap();
    for (labels, samples) in &in_tandem {
        if samples.keys().next().is_some_and(|t| *t <= first_round) {
            assert!(
                in_prometheus.contains_key(labels),
                "tandem stored {labels:?} but Prometheus never received it"
            );
        }
    }
    server.abort();
}

fn now_ms() -> i64 {
    tandem_api::now_ms()
}
