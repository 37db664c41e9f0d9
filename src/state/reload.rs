//! Live configuration reload: on SIGHUP and when the file changes, parse + validate + swap.
//!
//! An invalid file never replaces a running config: the old snapshot keeps serving, the
//! reason is logged and `realmgate_config_reload_total{result="error"}` counts it. Requests in
//! flight finish on the snapshot they loaded. The directory is watched (not the file) because
//! editors and Kubernetes ConfigMaps replace files by rename/symlink swap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::config::{self, ConfigError, ProcessEnv};
use crate::metrics::metrics;
use crate::state::Shared;

/// Reloads `path` into `shared` now. Used by the signal/file watcher and by tests.
pub fn reload_from(shared: &Shared, path: &Path) -> Result<(), ConfigError> {
    let loaded = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))
        .and_then(|text| config::parse_str(&text, &ProcessEnv))
        .and_then(|raw| shared.install(raw, Some(path.to_path_buf())));
    match loaded {
        Ok(()) => {
            metrics()
                .config_reload_total
                .with_label_values(&["ok"])
                .inc();
            tracing::info!(config = %path.display(), "configuration reloaded");
            Ok(())
        }
        Err(e) => {
            metrics()
                .config_reload_total
                .with_label_values(&["error"])
                .inc();
            tracing::error!(config = %path.display(), error = %e, "configuration reload rejected; the previous configuration stays in force");
            Err(e)
        }
    }
}

/// Background service: SIGHUP and (optionally) file changes trigger [`reload_from`].
pub struct Reloader {
    pub shared: Arc<Shared>,
    pub path: PathBuf,
    pub watch_file: bool,
}

fn digest(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
            .as_ref()
            .to_vec(),
    )
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload on signal disabled");
                None
            }
        };
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let file_name = self.path.file_name().map(|n| n.to_os_string());
        let _watcher = if self.watch_file {
            let dir = self
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    // Our file, or a ConfigMap `..data` symlink swap.
                    let relevant = ev.paths.iter().any(|p| {
                        p.file_name()
                            .is_some_and(|n| Some(n.to_os_string()) == file_name || n == "..data")
                    });
                    if relevant {
                        let _ = tx.try_send(());
                    }
                }
            });
            match watcher {
                Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload on SIGHUP only");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "file watching unavailable; reload on SIGHUP only");
                    None
                }
            }
        } else {
            None
        };
        let mut last = digest(&self.path);
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = hup_recv => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = reload_from(&self.shared, &self.path);
                    last = digest(&self.path);
                }
                Some(()) = rx.recv() => {
                    // Let a burst of events (write + rename + chmod) settle first.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    while rx.try_recv().is_ok() {}
                    let now = digest(&self.path);
                    if now.is_some() && now != last {
                        let _ = reload_from(&self.shared, &self.path);
                        last = now;
                    }
                }
            }
        }
    }
}
