//! The resolved system: what one environment runs once overlays are applied and defaults
//! filled in. Every field is concrete (no "inherit" left), so the server, the diff and the
//! content hash all see the same thing. The JSON/TOML form of these types is what `render`
//! prints and what a revision stores.

use crate::units::{ByteSize, Cpu, Dur};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The environment a file without `--env` resolves to.
pub const DEFAULT_ENV: &str = "dev";
/// The server's HTTP listener when the file names none (the next free port is taken when busy).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7300";

/// One environment's fully resolved system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// `[system] name`; defaults to the name of the folder holding the file.
    pub name: String,
    /// The environment this was resolved for (`dev` when no `--env`).
    pub env: String,
    /// Where this environment's server listens and, for remote environments, where it is.
    pub server: ServerSettings,
    /// Services by name, in name order.
    #[serde(default)]
    pub service: BTreeMap<String, Service>,
    /// Inline alert rules (`[[alert]]`); evaluated by the alerting issue's engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert: Vec<AlertRule>,
    /// Prometheus rule files, as written (relative to the system file's folder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_files: Vec<String>,
    /// How metrics are collected, kept and forwarded.
    #[serde(default)]
    pub monitoring: Monitoring,
    /// Where alert notifications go (`[[receiver]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receiver: Vec<Receiver>,
    /// Which alerts go to which receivers (`[[route]]`), in the order they are checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<Route>,
}

fn yes() -> bool {
    true
}

fn is_yes(flag: &bool) -> bool {
    *flag
}

/// `[monitoring]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitoring {
    /// How often instances, the host and the proxy are measured. Default 1s.
    pub interval: Dur,
    /// How often each service's `metrics` path is scraped. Default 15s.
    pub scrape_interval: Dur,
    /// How long samples are kept. Default 15d.
    pub retention: Dur,
    /// Delete the oldest samples while the store is larger than this. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// Prometheus remote-write endpoints every stored sample is also sent to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<RemoteWrite>,
    /// `builtin_alerts = { ... }`: which built-in rule groups run, and the forecast horizon.
    #[serde(default, skip_serializing_if = "BuiltinAlerts::is_default")]
    pub builtin_alerts: BuiltinAlerts,
    /// How often the inline `[[alert]]` rules are evaluated. Default 15s.
    #[serde(
        default = "default_rule_interval",
        skip_serializing_if = "is_default_rule_interval"
    )]
    pub rule_interval: Dur,
    /// The file's `[[inhibit]]` rules (base, then the environment's). Not a key of
    /// `[monitoring]`: kept here rather than on [`System`] so that code building a
    /// `System` by hand (with `..Default::default()` on its monitoring) keeps compiling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inhibit: Vec<InhibitRule>,
    /// `[system] builtin_inhibit`: whether the built-in inhibition applies (a service's
    /// crash-loop or OOM alert mutes its anomaly, SLO burn and regression alerts). Default
    /// true; left out of the stored form while true, so older revisions keep their hash.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub builtin_inhibit: bool,
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            interval: Dur::from_secs(1),
            scrape_interval: Dur::from_secs(15),
            retention: Dur::from_secs(15 * 86_400),
            max_bytes: None,
            remote_write: Vec::new(),
            builtin_alerts: BuiltinAlerts::default(),
            rule_interval: default_rule_interval(),
            inhibit: Vec::new(),
            builtin_inhibit: true,
        }
    }
}

fn default_rule_interval() -> Dur {
    Dur::from_secs(15)
}

fn is_default_rule_interval(d: &Dur) -> bool {
    *d == default_rule_interval()
}

/// `[monitoring] builtin_alerts`: each built-in rule family can be switched off; all are on
/// by default. Left out of the rendered form while it is the default, so revisions stored
/// before it existed keep their content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinAlerts {
    pub crash_loop: bool,
    pub oom_kills: bool,
    pub memory_forecast: bool,
    pub disk_forecast: bool,
    pub fd_forecast: bool,
    pub anomalies: bool,
    pub slo: bool,
    pub regression: bool,
    /// Forecasts alert when the limit is reached sooner than this. Default 2h.
    pub forecast_horizon: Dur,
}

impl Default for BuiltinAlerts {
    fn default() -> Self {
        BuiltinAlerts {
            crash_loop: true,
            oom_kills: true,
            memory_forecast: true,
            disk_forecast: true,
            fd_forecast: true,
            anomalies: true,
            slo: true,
            regression: true,
            forecast_horizon: Dur::from_secs(2 * 3600),
        }
    }
}

impl BuiltinAlerts {
    pub fn is_default(&self) -> bool {
        *self == BuiltinAlerts::default()
    }
}

/// One `remote_write` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWrite {
    /// e.g. `http://127.0.0.1:9090/api/v1/write`.
    pub url: String,
    /// Time one send may take before it is retried. Default 30s.
    pub timeout: Dur,
}

/// `[server]`: the environment's server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// HTTP listener, `host:port`. `None` means [`DEFAULT_LISTEN`] or the next free port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// URL of a remote server for this environment (`server = "https://..."` in an overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `[service.NAME]`: one program tandem runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Command line, split like a shell would (no pipes or `&&`); `${PORT}` and `${VAR}`
    /// are interpolated from the instance's environment at launch.
    pub run: String,
    /// Working folder, absolute once resolved (relative paths are against the file's folder).
    pub cwd: String,
    /// Extra environment variables for every instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of variables whose values come from the environment's secret store
    /// (`tandem secret set`), never from the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// A keyed fingerprint of each secret's value (see [`crate::secret_fingerprint`]),
    /// filled in by the server that plans or deploys the system, never read from the file:
    /// a changed value changes the content hash and the template hash, so a deploy replaces
    /// the instances, while the revision keeps no value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_fingerprints: BTreeMap<String, String>,
    /// The public port tandem serves for this service (instances get their own `PORT`), and
    /// the address it binds (loopback unless the file names one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PublicPort>,
    /// HTTPS on the public port: the certificate and key files, absolute once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Health check; without one an instance counts as healthy once it has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Services that must be healthy before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Resource limits, enforced through cgroups where available.
    #[serde(default)]
    pub limits: Limits,
    /// Number of instances.
    pub replicas: u32,
    /// How instances are stopped.
    pub stop: Stop,
    /// When an exited instance is started again.
    pub restart: RestartPolicy,
    /// Path of the app's own Prometheus metrics, scraped by the monitoring issue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// How a new revision of this service is rolled out by `tandem deploy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
    /// How tandem's proxy carries traffic to it: request by request (`http`) or as a byte
    /// stream (`tcp`). Default `http` when the health check is an HTTP one, else `tcp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Service-level objective; the built-in burn-rate alerts watch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
    /// Commands run around a deploy of this service (a migration before, a warm-up after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<crate::hooks::Hooks>,
    /// The proxy's limits for this service's requests and connections (public port and edge
    /// listeners alike); each key left out keeps the proxy's default.
    #[serde(default, skip_serializing_if = "ProxySettings::is_empty")]
    pub proxy: ProxySettings,
}

/// `port`: where a service's public listener binds. `port = 8080` is 127.0.0.1:8080;
/// `port = "0.0.0.0:8080"` names the address. Stored as the file writes it: a bare number
/// while the address is loopback (so revisions stored before addresses existed keep their
/// content hash and still load), `"ADDRESS:PORT"` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicPort {
    pub ip: IpAddr,
    pub port: u16,
}

impl PublicPort {
    /// The address a bare `port = N` binds.
    pub const DEFAULT_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// `port` on 127.0.0.1.
    pub fn loopback(port: u16) -> PublicPort {
        PublicPort {
            ip: PublicPort::DEFAULT_IP,
            port,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// Whether the file wrote a bare port number (the address is 127.0.0.1).
    pub fn is_default_ip(&self) -> bool {
        self.ip == PublicPort::DEFAULT_IP
    }

    /// Whether two listeners on these addresses cannot both be bound: the same port, and
    /// the same address or either one all interfaces (`0.0.0.0`, `[::]`).
    pub fn clashes_with(&self, other: &PublicPort) -> bool {
        addresses_clash(self.addr(), other.addr())
    }
}

/// Whether `a` and `b` cannot both be bound by listeners: the same port, and the same
/// address or either one unspecified (`0.0.0.0` or `[::]`, which on Linux takes the port on
/// every address of both families).
pub fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl From<u16> for PublicPort {
    fn from(port: u16) -> PublicPort {
        PublicPort::loopback(port)
    }
}

/// `8080` on loopback, else the address: `0.0.0.0:8080`, `[::]:8080`.
impl fmt::Display for PublicPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_default_ip() {
            write!(f, "{}", self.port)
        } else {
            write!(f, "{}", self.addr())
        }
    }
}

impl Serialize for PublicPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_default_ip() {
            serializer.serialize_u16(self.port)
        } else {
            serializer.collect_str(&self.addr())
        }
    }
}

impl<'de> Deserialize<'de> for PublicPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PublicPort, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PublicPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or an \"ADDRESS:PORT\" string")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<PublicPort, E> {
                u16::try_from(n)
                    .map(PublicPort::loopback)
                    .map_err(|_| E::custom(format!("port {n} is out of range")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<PublicPort, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("port {n} is out of range")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<PublicPort, E> {
                let addr: SocketAddr = text
                    .parse()
                    .map_err(|_| E::custom(format!("'{text}' is not ADDRESS:PORT")))?;
                Ok(PublicPort {
                    ip: addr.ip(),
                    port: addr.port(),
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `tls = { cert = "...", key = "..." }`: the public listener speaks HTTPS with this
/// certificate chain and private key (PEM files, absolute paths once resolved). The proxy
/// reads them when a deploy opens the listener, and again whenever they change on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: String,
    pub key: String,
}

/// `slo = { availability = 0.999, latency_p99 = "300ms", window = "30d" }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Share of requests that must not fail with a 5xx, in (0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<f64>,
    /// 99 % of requests must take at most this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99: Option<Dur>,
    /// The period the objective is measured over. Default 30d.
    pub window: Dur,
}

/// `protocol = "http" | "tcp"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    #[default]
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// `health = { http = "/healthz" }`, `{ tcp = true }` or `{ exec = "pg_isready" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(flatten)]
    pub check: HealthCheck,
    /// Time between checks. Default 1s.
    pub interval: Dur,
    /// Time one check may take. Default 1s.
    pub timeout: Dur,
    /// After a start, failures during this long do not count. Default 5s.
    pub grace: Dur,
    /// Consecutive failures (after the grace) that make an instance unhealthy. Default 3.
    pub failures: u32,
}

/// What a health check does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// HTTP GET of this path on the instance's port; any 2xx or 3xx passes.
    Http(String),
    /// A TCP connect to the instance's port succeeds (`tcp = true`).
    Tcp(bool),
    /// This command line exits 0 (run with the instance's environment).
    Exec(String),
}

/// `limits = { memory = "256MiB", cpu = 0.5, pids = 100 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// `proxy = { response_timeout = "5m", max_request_body = "50MiB", ... }`: the limits the proxy
/// holds one service's traffic to, on its public port and on every edge listener to it. A key
/// left out (`None`) keeps the proxy's default, so an empty table is the same as none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// How long a client may take to send a request head, after connecting or after its
    /// previous response; also how long an idle keep-alive connection stays open. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// The largest request head (request line and headers); larger gets 431. Default 64KiB.
    /// HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_header: Option<ByteSize>,
    /// The largest request body; larger gets 413. Default unlimited. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<ByteSize>,
    /// How long connecting to an instance may take before the next is tried. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Dur>,
    /// How long an instance may take from the request sent to its response head; then 504.
    /// Default 60s. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<Dur>,
}

impl ProxySettings {
    /// Whether every key keeps the proxy's default.
    pub fn is_empty(&self) -> bool {
        *self == ProxySettings::default()
    }
}

/// `stop = { signal = "SIGTERM", grace = "10s" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// Signal name sent to the instance's process group first. Default "SIGTERM".
    pub signal: String,
    /// Time allowed to exit before SIGKILL. Default 10s.
    pub grace: Dur,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            signal: "SIGTERM".into(),
            grace: Dur::from_secs(10),
        }
    }
}

/// `restart = "always" | "on-failure" | "never"`. Default "always".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// `release = { strategy = "canary", ... }`: how a changed service is rolled out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Release {
    /// Stop the old instances, then start the new ones (singletons such as databases).
    Recreate,
    /// Start the new revision beside the old, switch all traffic at once, keep the old warm.
    BlueGreen {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_warm: Option<Dur>,
    },
    /// Shift traffic in steps, judging the new revision at each.
    Canary {
        /// Percentages of traffic, increasing, ending at 100.
        steps: Vec<u8>,
        step_time: Dur,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_error_rate: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_p99: Option<Dur>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_requests: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_warm: Option<Dur>,
        /// PromQL checks evaluated at the end of every step (see [`crate::Analysis`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        analysis: Vec<crate::analysis::Analysis>,
    },
}

/// `[[alert]]`: one inline alerting rule in Prometheus's terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    pub expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<Dur>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `[[receiver]]`: where alert notifications are sent. Exactly one of `webhook` and
/// `alertmanager` is set; a webhook receiver has its format and timings filled in, an
/// Alertmanager receiver has none (Alertmanager groups and repeats on its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Unique among the receivers; routes name it.
    pub name: String,
    /// An `http://` URL that receives a JSON POST per notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// The webhook's body: `json` (Alertmanager's webhook shape) or `slack`. Default json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<WebhookFormat>,
    /// An Alertmanager's base URL (`http://host:9093`); alerts go to `/api/v2/alerts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<String>,
    /// How long a new group of alerts waits for more before its first notification.
    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<Dur>,
    /// How long after a notification a changed group is notified again. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<Dur>,
    /// How long after a notification an unchanged, still firing group is repeated.
    /// Default 4h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<Dur>,
    /// The labels a webhook receiver groups alerts by. Default `["alertname", "service",
    /// "env"]`; `["..."]` groups by every label (each alert its own group), `[]` makes one
    /// group of all the receiver's alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Vec<String>>,
}

/// `format = "json" | "slack"` of a webhook receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
        }
    }
}

/// `[[route]]`: alerts whose labels equal every `match` entry and satisfy every
/// `matchers` entry go to `receiver`. Routes are checked in order; the first that matches
/// decides, unless it says `continue = true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Label equalities; empty matches every alert.
    #[serde(rename = "match", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_: BTreeMap<String, String>,
    /// Alertmanager-style matchers (`=`, `!=`, `=~`, `!~`); empty matches every alert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<crate::notify::Matcher>,
    pub receiver: String,
    /// Keep checking the routes after this one when it matches. Default false.
    #[serde(rename = "continue", default)]
    pub continue_: bool,
}

impl Route {
    /// Whether every `match` label of the route has the alert's value and every matcher
    /// holds (a label the alert lacks counts as the empty string, as in Alertmanager).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_
            .iter()
            .all(|(k, v)| labels.get(k).map_or(v.is_empty(), |have| have == v))
            && self.matchers.iter().all(|m| m.matches(labels))
    }
}

/// The receivers an alert with `labels` goes to, by name, each once, in route order. With
/// no route, or when no route matches, that is every receiver: an alert is never dropped
/// for want of a route.
pub fn route_alert<'a>(
    receivers: &'a [Receiver],
    routes: &'a [Route],
    labels: &BTreeMap<String, String>,
) -> Vec<&'a str> {
    let mut chosen: Vec<&str> = Vec::new();
    for route in routes {
        if !route.matches(labels) {
            continue;
        }
        if !chosen.contains(&route.receiver.as_str()) {
            chosen.push(&route.receiver);
        }
        if !route.continue_ {
            break;
        }
    }
    if chosen.is_empty() {
        return receivers.iter().map(|r| r.name.as_str()).collect();
    }
    chosen
}

/// `[[inhibit]]`: while an alert matching every `source_matchers` fires, alerts matching
/// every `target_matchers` that have the same values for the `equal` labels (a missing
/// label counting as empty) are not notified to webhook receivers. Alertmanager's
/// `inhibit_rule`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    pub source_matchers: Vec<crate::notify::Matcher>,
    pub target_matchers: Vec<crate::notify::Matcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub equal: Vec<String>,
}

impl InhibitRule {
    /// Whether a firing alert with `source` labels mutes the alert with `target` labels
    /// under this rule. As in Alertmanager, a source that also matches the target matchers
    /// does not count when the target matches the source matchers too, so an alert that
    /// matches both sides never mutes itself (nor its like).
    pub fn inhibits(
        &self,
        source: &BTreeMap<String, String>,
        target: &BTreeMap<String, String>,
    ) -> bool {
        let all = |matchers: &[crate::notify::Matcher], labels| {
            matchers.iter().all(|m| m.matches(labels))
        };
        if !all(&self.target_matchers, target) || !all(&self.source_matchers, source) {
            return false;
        }
        let value = |labels: &BTreeMap<String, String>, name: &String| {
            labels.get(name).map_or("", String::as_str).to_string()
        };
        if !self
            .equal
            .iter()
            .all(|name| value(source, name) == value(target, name))
        {
            return false;
        }
        !(all(&self.source_matchers, target) && all(&self.target_matchers, source))
    }
}
