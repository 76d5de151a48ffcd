//! The local runtime: runs service instances on this machine and keeps them running.
//!
//! Each instance runs under a small shim process (`tandem __shim DIR`, see [`shim`]) that owns
//! the service's pipes, limits and exit status, so the tandem server can stop, crash or be
//! upgraded without the services noticing: a new server re-attaches through the files the
//! shim keeps in the instance's folder ([`launch`]). Around that sit the cgroup drivers
//! ([`cgroup`]), health checks ([`health`]), size-rotated log files ([`logfile`]) and
//! process statistics from `/proc` ([`procfs`]), and one-off commands such as deploy hooks
//! ([`task`]). The port holder ([`ports`], `tandem __ports DIR`) does for listening sockets
//! what the shim does for processes: it keeps them open while no server runs.

pub mod cgroup;
pub mod health;
pub mod launch;
pub mod logfile;
pub mod ports;
pub mod procfs;
pub mod runtime;
pub mod shim;
pub mod task;
