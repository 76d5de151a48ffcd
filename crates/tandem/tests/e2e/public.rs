//! A public port on all interfaces, over HTTPS: `port = "0.0.0.0:P"` with `tls = { cert,
//! key }` (a certificate made with the `openssl` CLI at test time) answers
//! `curl -k https://127.0.0.1:P/` over HTTP/1.1 and HTTP/2, `tandem status` shows the address,
//! and `tandem validate` warns about a key others can read.

use super::support::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Writes `certs/web.pem` and `certs/web.key` (mode `key_mode`) into the project.
fn make_certificate(p: &Project, key_mode: u32) {
    let certs = p.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-nodes", "-days", "2"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(certs.join("web.key"))
        .arg("-out")
        .arg(certs.join("web.pem"))
        .output()
        .expect("openssl runs (apt-get install -y openssl)");
    assert!(made.status.success(), "openssl failed: {made:?}");
    let key = certs.join("web.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(key_mode)).unwrap();
}

/// `curl -k` of `path` on 127.0.0.1:`port` over HTTPS with `version` (`--http1.1`,
/// `--http2`); the body followed by the HTTP version curl used.
fn curl_https(port: u16, path: &str, version: &str) -> Option<String> {
    let output = Command::new("curl")
        .args(["--silent", "--insecure", "--max-time", "5", version])
        .args(["--write-out", "http/%{http_version}"])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs (apt-get install -y curl)");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn a_public_https_port_on_all_interfaces_answers_and_status_shows_it() {
    let port = free_port();
    let service = crate::app_service(
        "web",
        port,
        "tls = { cert = \"certs/web.pem\", key = \"certs/web.key\" }",
    )
    .replace(
        &format!("port = {port}\n"),
        &format!("port = \"0.0.0.0:{port}\"\n"),
    );
    let p = Project::new(&service);

    // A key others may read is a warning, not an error.
    make_certificate(&p, 0o644);
    let validated = p.run(&["validate"]).ok();
    assert!(
        validated.stderr.contains("warning: the TLS key") && validated.stderr.contains("chmod 600"),
        "{}",
        validated.all()
    );
    std::fs::set_permissions(
        p.path().join("certs/web.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let validated = p.run(&["validate"]).ok();
    assert!(!validated.stderr.contains("warning"), "{}", validated.all());

    p.up().ok();
    let http1 = eventually("an HTTPS answer over HTTP/1.1", || {
        curl_https(port, "/hello", "--http1.1")
    });
    assert_eq!(http1, "hello\nhttp/1.1");
    let http2 = curl_https(port, "/hello", "--http2").expect("an HTTPS answer over HTTP/2");
    assert_eq!(http2, "hello\nhttp/2");

    // Plain HTTP on the HTTPS port gets no answer.
    let plain = http_get(port, "/hello");
    assert!(
        plain.is_err(),
        "plain HTTP answered on the HTTPS port: {plain:?}"
    );

    let status = p.status();
    let web = status.services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.port, Some(port));
    assert_eq!(
        web.address.as_deref(),
        Some(format!("0.0.0.0:{port}").as_str())
    );
    assert!(web.tls);
    let text = p.run(&["status"]).ok().stdout;
    assert!(text.contains(&format!("https://0.0.0.0:{port}→")), "{text}");
}
