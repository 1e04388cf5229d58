//! The state every handler shares: one `Arc`, cloned per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;

use super::extract::ServiceKeys;
use crate::auth::Auth;
use crate::backup::Backups;
use crate::config::Config;
use crate::functions::Functions;
use crate::realtime::Realtime;
use crate::rules::Rules;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The services the handlers reach.
pub struct Services {
    pub store: Store,
    pub auth: Auth,
    pub rules: Rules,
    pub realtime: Realtime,
    pub functions: Functions,
    pub backups: Backups,
}

struct Inner {
    store: Store,
    auth: Auth,
    rules: Rules,
    realtime: Realtime,
    functions: Functions,
    backups: Backups,
    config: Config,
    service_keys: ServiceKeys,
    metrics: PrometheusHandle,
    stopping: AtomicBool,
}

impl AppState {
    pub fn new(services: Services, config: Config, service_keys: ServiceKeys, metrics: PrometheusHandle) -> AppState {
        let Services { store, auth, rules, realtime, functions, backups } = services;
        AppState(Arc::new(Inner {
            store,
            auth,
            rules,
            realtime,
            functions,
            backups,
            config,
            service_keys,
            metrics,
            stopping: AtomicBool::new(false),
        }))
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub fn auth(&self) -> &Auth {
        &self.0.auth
    }

    pub fn rules(&self) -> &Rules {
        &self.0.rules
    }

    pub fn realtime(&self) -> &Realtime {
        &self.0.realtime
    }

    pub fn functions(&self) -> &Functions {
        &self.0.functions
    }

    pub fn backups(&self) -> &Backups {
        &self.0.backups
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn service_keys(&self) -> &ServiceKeys {
        &self.0.service_keys
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.0.metrics
    }

    /// Marks the server as shutting down (`/readyz` answers 503 from then on).
    pub fn begin_stopping(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.0.stopping.load(Ordering::SeqCst)
    }
}
