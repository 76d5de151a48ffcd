//! The starter `tandem.toml` written by `tandem init`.

/// A small, commented system file that validates clean: a web service and a cache, with
/// the keys people reach for first and pointers to the rest.
pub const STARTER_FILE: &str = r#"# tandem.toml: the whole system, one file. Reference: docs/system-file.md
# Check it with `tandem validate`, start it with `tandem up`.

[system]
# name = "shop"                  # default: the name of this folder
# rule_files = ["alerts/*.yml"]  # Prometheus rule files, relative to this folder

[server]
# listen = "127.0.0.1:7300"      # the server's API; default 127.0.0.1:7300 or the next free port

[service.web]
# The command to run, split like a shell would (no pipes or &&).
# tandem gives each instance its own PORT and serves the service on `port`.
run = "python3 -m http.server ${PORT}"
port = 8080
health = { http = "/", interval = "1s", timeout = "1s", grace = "5s", failures = 3 }
depends_on = ["cache"]           # web receives CACHE_URL and CACHE_ADDR
limits = { memory = "256MiB", cpu = 0.5 }
replicas = 1
restart = "always"               # always | on-failure | never
# release = { strategy = "canary", steps = [10, 50, 100], step_time = "30s", max_error_rate = 0.01 }

[service.cache]
run = "python3 -m http.server ${PORT}"
port = 8081
health = { tcp = true }
release = { strategy = "recreate" }

[[alert]]
name = "WebDown"
expr = 'up{service="web"} == 0'
for = "1m"
labels = { severity = "page" }
annotations = { summary = "web is down" }

# Environments are overlays of the base above; `dev` is the base itself.
# [env.prod]
# server = "https://prod.example.net:7300"
# [env.prod.service.web]
# replicas = 4
# limits = { memory = "1GiB" }
"#;
