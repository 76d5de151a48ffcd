//! Public ports outlive the server: the port holder (`tandem __ports`) keeps the listening
//! sockets, so while no server runs (here after a `kill -9`) connections are accepted by the
//! kernel and wait; the next server adopts the sockets and answers them. `tandem down`
//! closes them for good.
//!
//! The load loop here opens a fresh connection for each request, as new visitors do: a
//! keep-alive connection (what `support::Load` uses) lives inside the server process and
//! dies with it, so its next request fails whatever holds the listening socket. The loop
//! is paused around the kill, so that no request is inside the dying server; every request
//! sent after that must get its answer.

use super::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Requests `GET /hello` on `port` from two threads, each on a new connection.
struct FreshLoad {
    run: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Requests between connect and answer, and threads parked by a pause.
    in_flight: Arc<AtomicUsize>,
    /// Requests connected whose answer has not come yet.
    connected: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<(Vec<Seen>, Vec<String>)>>,
}

impl FreshLoad {
    fn start(port: u16) -> FreshLoad {
        let run = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let connected = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let threads = (0..2)
            .map(|_| {
                let (run, stop) = (run.clone(), stop.clone());
                let (in_flight, connected) = (in_flight.clone(), connected.clone());
                let (answered, failed) = (answered.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        in_flight.fetch_add(1, Ordering::SeqCst);
                        if !run.load(Ordering::SeqCst) {
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        let sent = Instant::now();
                        match fresh_get(port, &connected) {
                            Ok((status, body)) => {
                                seen.push(Seen {
                                    sent,
                                    at: Instant::now(),
                                    status,
                                    body,
                                });
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => {
                                failures.push(e);
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    (seen, failures)
                })
            })
            .collect();
        FreshLoad {
            run,
            stop,
            in_flight,
            connected,
            answered,
            failed,
            threads,
        }
    }

    fn wait_answers(&self, more: usize) {
        let target = self.answered.load(Ordering::SeqCst) + more;
        eventually("answers from the load loop", || {
            (self.answered.load(Ordering::SeqCst) >= target).then_some(())
        });
    }

    /// Stops sending and waits until no request is under way.
    fn pause(&self) {
        self.run.store(false, Ordering::SeqCst);
        eventually("the load loop to pause", || {
            (self.in_flight.load(Ordering::SeqCst) == 0).then_some(())
        });
    }

    fn resume(&self) {
        self.run.store(true, Ordering::SeqCst);
    }

    fn finish(self) -> (Vec<Seen>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut seen = Vec::new();
        let mut failures = Vec::new();
        for t in self.threads {
            let (s, f) = t.join().unwrap();
            seen.extend(s);
            failures.extend(f);
        }
        seen.sort_by_key(|s| s.at);
        (seen, failures)
    }
}

/// One `GET /hello` on a new connection; counts itself in `connected` between the connect
/// and the answer.
fn fresh_get(port: u16, connected: &AtomicUsize) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    connected.fetch_add(1, Ordering::SeqCst);
    let result = (|| {
        stream.set_read_timeout(Some(DEADLINE))?;
        let request =
            format!("GET /hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok::<_, std::io::Error>(text)
    })();
    connected.fetch_sub(1, Ordering::SeqCst);
    let text = result.map_err(|e| format!("request: {e}"))?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn public_ports_keep_accepting_while_a_killed_server_is_replaced() {
    let port = free_port();
    let p = Project::new(&format!(
        "[service.web]\nrun = \"python3 app.py\"\nport = {port}\n\
         health = {{ http = \"/healthz\", interval = \"200ms\", grace = \"20s\", failures = 2 }}\n\
         stop = {{ grace = \"2s\" }}\n"
    ));
    p.up().ok();
    let load = FreshLoad::start(port);
    load.wait_answers(20);

    // No request inside the server, then it dies.
    load.pause();
    let server = p.server_pid().unwrap();
    kill(server, libc::SIGKILL);
    assert!(wait_gone(server, Duration::from_secs(5)));

    // The port still accepts: the connection opens, the request waits for an answer.
    let mut probe = TcpStream::connect(("127.0.0.1", port))
        .expect("a connection while no server runs is accepted, not refused");
    probe
        .write_all(
            format!("GET /hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut first = [0u8; 1];
    let waiting = probe.read(&mut first).unwrap_err();
    assert!(
        matches!(
            waiting.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the request waits while no server runs: {waiting}"
    );
    // So do the load loop's.
    load.resume();
    eventually("both load threads to be connected and waiting", || {
        (load.connected.load(Ordering::SeqCst) >= 2).then_some(())
    });
    assert_eq!(
        load.failed.load(Ordering::SeqCst),
        0,
        "no request failed while no server ran"
    );

    // The next server adopts the sockets and answers what waited.
    let restarted = Instant::now();
    p.up().ok();
    let up_took = restarted.elapsed();
    probe.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = String::new();
    probe.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello\n"), "{answer}");
    load.wait_answers(20);
    let (seen, failures) = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(seen.iter().all(|s| s.status == 200 && s.body == "hello\n"));
    let longest = seen.iter().map(|s| s.at - s.sent).max().unwrap();
    println!(
        "{} requests, none failed; the longest took {longest:?} (the server was down for the probe's wait, then `tandem up -d` took {:?} to return)",
        seen.len(),
        up_took
    );

    // `tandem down` closes the port and ends the holder.
    p.run(&["down"]).ok();
    eventually("the port to be free after down", || {
        std::net::TcpListener::bind(("127.0.0.1", port)).ok()
    });
    assert!(
        !p.data_dir().join("ports.sock").exists(),
        "the port holder is gone"
    );
}
