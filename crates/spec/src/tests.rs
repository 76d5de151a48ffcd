//! Tests of the public API as other crates use it.

use super::*;
use crate::units::Dur;
use std::path::Path;

const SHOP: &str = r#"
[system]
name = "shop"

[service.db]
run = "redis-server --port ${PORT}"
port = 6379

[service.api]
run = "./api"
port = 8080
depends_on = ["db"]
health = { http = "/healthz" }
limits = { memory = "256MiB", cpu = 0.5 }

[service.web]
run = "./web"
port = 8081
depends_on = ["api", "db"]

[service.batch]
run = "./batch"

[env.staging.service.api]
health = { tcp = true }

[env.prod]
server = "https://prod.example.net:7300"

[env.prod.service.api]
replicas = 4
limits = { memory = "1GiB" }
"#;

fn shop(env: &str) -> System {
    let dir = std::env::temp_dir();
    resolve("tandem.toml", SHOP, &dir, env).unwrap_or_else(|d| panic!("{d}"))
}

#[test]
fn starter_file_validates_clean_and_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let systems =
        validate_all("tandem.toml", STARTER_FILE, dir.path()).unwrap_or_else(|d| panic!("{d}"));
    let dev = &systems[0];
    assert_eq!(dev.env, "dev");
    let again = resolve("tandem.toml", &render_toml(dev), dir.path(), "dev")
        .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(&again, dev);
}

#[test]
fn defaults_are_filled_in() {
    let system = shop("dev");
    let batch = &system.service["batch"];
    assert_eq!(batch.replicas, 1);
    assert_eq!(batch.restart, RestartPolicy::Always);
    assert_eq!(batch.stop, Stop::default());
    assert_eq!(
        batch.cwd,
        std::env::temp_dir()
            .display()
            .to_string()
            .trim_end_matches('/')
    );
    let health = system.service["api"].health.as_ref().expect("health");
    assert_eq!(
        (
            health.interval,
            health.timeout,
            health.grace,
            health.failures
        ),
        (Dur::from_secs(1), Dur::from_secs(1), Dur::from_secs(5), 3)
    );
    assert_eq!(system.server.listen, None);
}

#[test]
fn overlays_merge_tables_and_replace_scalars() {
    let prod = shop("prod");
    let api = &prod.service["api"];
    assert_eq!(api.replicas, 4);
    assert_eq!(api.limits.memory, Some(units::ByteSize(1 << 30)));
    assert_eq!(api.limits.cpu, Some(units::Cpu(0.5)));
    assert_eq!(
        prod.server.url.as_deref(),
        Some("https://prod.example.net:7300")
    );
    let staging = shop("staging");
    let health = staging.service["api"].health.as_ref().expect("health");
    assert_eq!(health.check, HealthCheck::Tcp(true));
}

#[test]
fn environments_lists_dev_first() {
    assert_eq!(environments(SHOP), vec!["dev", "prod", "staging"]);
    assert_eq!(environments("not toml = = ="), vec!["dev"]);
    assert_eq!(environments("[env.dev]\n[env.qa]\n"), vec!["dev", "qa"]);
}

#[test]
fn load_reports_a_missing_file() {
    let error = load(Path::new("/nonexistent/tandem.toml"), "dev").expect_err("missing");
    assert_eq!(error.count(), 1);
    let text = error.to_string();
    assert!(
        text.starts_with(
            "/nonexistent/tandem.toml:1:1: error: cannot read /nonexistent/tandem.toml: No such file or directory"
        ),
        "{text}"
    );
    assert!(text.contains("hint: run `tandem init` to create one, or pass -f FILE"));
}

#[test]
fn load_reads_from_disk_with_the_folder_as_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, "[service.api]\nrun = \"./api\"\n").expect("write");
    let system = load(&path, "dev").unwrap_or_else(|d| panic!("{d}"));
    let folder_name = dir.path().file_name().expect("name").to_string_lossy();
    assert_eq!(system.name, folder_name);
    assert_eq!(Path::new(&system.service["api"].cwd), dir.path());
}

#[test]
fn graph_order_and_dependents() {
    let system = shop("dev");
    assert_eq!(
        start_order(&system),
        vec![vec!["batch", "db"], vec!["api"], vec!["web"]]
    );
    assert_eq!(dependents(&system, "db"), vec!["api", "web"]);
    assert_eq!(dependents(&system, "web"), Vec::<String>::new());
    assert_eq!(
        graph_text(&system),
        "batch\ndb :6379\napi :8080 -> db\nweb :8081 -> api, db\n"
    );
    let dot = graph_dot(&system);
    assert!(dot.starts_with("digraph \"shop\" {"), "{dot}");
    assert!(dot.contains("\"web\" -> \"api\";"), "{dot}");
}

#[test]
fn diff_is_typed_per_field() {
    let dev = shop("dev");
    let prod = shop("prod");
    let changes = diff(&dev, &prod);
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "env",
            "server.url",
            "service.api.limits.memory",
            "service.api.replicas"
        ]
    );
    let memory = &changes[2];
    assert_eq!(memory.old, Some(serde_json::json!("256MiB")));
    assert_eq!(memory.new, Some(serde_json::json!("1GiB")));
    assert_eq!(changes[1].old, None);
    assert_eq!(
        changed_services(&dev, &prod)
            .into_iter()
            .collect::<Vec<_>>(),
        vec!["api"]
    );

    let mut fewer = dev.clone();
    fewer.service.remove("batch");
    let removed = diff(&dev, &fewer);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].path, "service.batch");
    assert!(removed[0].new.is_none());
}

#[test]
fn content_hash_is_stable_and_sensitive() {
    let a = shop("dev");
    let b = shop("dev");
    assert_eq!(content_hash(&a), content_hash(&b));
    assert_eq!(content_hash(&a).len(), 64);
    assert_ne!(content_hash(&a), content_hash(&shop("prod")));
}

#[test]
fn dependency_variable_names() {
    assert_eq!(
        dependency_variables("user-db"),
        ("USER_DB_URL".to_string(), "USER_DB_ADDR".to_string())
    );
}

#[test]
fn resolve_one_env_reports_value_errors_anywhere() {
    let text = "[service.api]\nrun = \"./api\"\n[env.prod.service.api]\nreplica = 2\n";
    let error = resolve("tandem.toml", text, Path::new("/tmp"), "dev").expect_err("typo in prod");
    assert_eq!(error.count(), 1);
    assert!(error.0[0].message.contains("unknown key 'replica'"));
}

#[test]
fn never_panics_on_truncated_or_mangled_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let texts = [STARTER_FILE, SHOP];
    for text in texts {
        for (cut, _) in text.char_indices() {
            let prefix = &text[..cut];
            let _ = validate_all("t.toml", prefix, dir.path());
            let mangled = format!("{prefix}\"{}", &text[cut..]);
            let _ = validate_all("t.toml", &mangled, dir.path());
        }
    }
}
