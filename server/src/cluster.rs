//! What nodes sharing one database keep in step, each second: what auth changed on the
//! others (sessions revoked, users disabled or deleted, signing keys rotated, service keys
//! added or revoked) and the project's deployed files (`rules.toml`, `functions/*.js`).
//!
//! The database holds what is deployed. A node applies to its own files every version it
//! has not seen (then reloads them as if edited), and deploys its files that differ from
//! what it last saw in the database, whether changed through the API or by hand: a rules
//! change or a function deploy on one node runs on every node within about a second. At
//! a node's first sync, what the database holds wins over its local files; a file the
//! database does not have yet is deployed from them.
//!
//! A node alone on its database (SQLite) runs none of this.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::http::AppState;

const RULES: &str = "rules.toml";
const FUNCTIONS: &str = "functions/";

/// Keeps this node in step with the others until the server stops.
pub async fn follow(state: AppState, mut project: Project) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut since = 0;
    loop {
        ticker.tick().await;
        match state.auth().follow_revocations(since).await {
            Ok(next) => since = next,
            Err(error) => tracing::warn!(%error, "reading other nodes' revocations failed"),
        }
        if let Err(error) = state.auth().reload_keys().await {
            tracing::warn!(%error, "reloading signing keys failed");
        }
        match state.store().backend().service_key_hashes().await {
            Ok(hashes) => state.service_keys().replace_stored(hashes),
            Err(error) => tracing::warn!(%error, "reloading service keys failed"),
        }
        if let Err(error) = project.sync(&state).await {
            tracing::warn!(%error, "syncing the project's files with the other nodes failed");
        }
    }
}

/// This node's view of the deployed files.
pub struct Project {
    rules_file: PathBuf,
    functions_dir: PathBuf,
    /// The last deployment version applied here.
    version: i64,
    /// What the database held of each file when last seen (`None`: deleted).
    known: BTreeMap<String, Option<String>>,
}

impl Project {
    pub fn new(state: &AppState) -> Project {
        Project::at(state.rules().file().to_owned(), state.functions().dir().to_owned())
    }

    /// The files of the project whose rules file and functions dir these are.
    pub fn at(rules_file: PathBuf, functions_dir: PathBuf) -> Project {
        Project { rules_file, functions_dir, version: 0, known: BTreeMap::new() }
    }

    /// Applies what other nodes deployed, then deploys what changed here.
    pub async fn sync(&mut self, state: &AppState) -> anyhow::Result<()> {
        let backend = state.store().backend();
        let mut applied = false;
        let mut local = self.local()?;
        for crate::store::Deployed { name, source, version } in backend.deployed(self.version).await? {
            self.version = version;
            if self.known.get(&name) == Some(&source) {
                continue; // what this node deployed itself, or knew already
            }
            if local.get(&name) != source.as_ref() {
                self.write(&name, source.as_deref())?;
                match &source {
                    Some(text) => local.insert(name.clone(), text.clone()),
                    None => local.remove(&name),
                };
                applied = true;
                tracing::info!(file = %name, version, "applied a deployment from another node");
            }
            self.known.insert(name, source);
        }
        let names: BTreeSet<String> = local.keys().chain(self.known.keys()).cloned().collect();
        for name in names {
            let here = local.get(&name).cloned();
            if self.known.get(&name).cloned().flatten() != here {
                let version = backend.deploy(name.clone(), here.clone()).await?;
                tracing::info!(file = %name, version, "deployed for the other nodes");
                self.known.insert(name, here);
            }
        }
        if applied {
            let rules = state.rules().clone();
            tokio::task::spawn_blocking(move || rules.reload_if_changed()).await?;
            state.functions().reload().await;
        }
        Ok(())
    }

    /// The project's files on this node, by deployment name (`rules.toml`,
    /// `functions/<file>.js`).
    pub fn local(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut files = BTreeMap::new();
        match std::fs::read_to_string(&self.rules_file) {
            Ok(source) => {
                files.insert(RULES.to_owned(), source);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }
        let modules = crate::functions::read_dir(&self.functions_dir).map_err(|error| anyhow::anyhow!("{error}"))?;
        for (name, source) in modules {
            files.insert(format!("{FUNCTIONS}{name}"), source);
        }
        Ok(files)
    }

    /// Whether `name` names a project file: `rules.toml` or `functions/<module>.js`.
    pub fn is_file_name(name: &str) -> bool {
        match name.strip_prefix(FUNCTIONS) {
            Some(module) => crate::functions::is_module_name(module),
            None => name == RULES,
        }
    }

    /// Writes (or with `None` deletes) the file of deployment name `name`; refused for a
    /// name that is no project file.
    pub fn write(&self, name: &str, source: Option<&str>) -> anyhow::Result<()> {
        let (dir, file) = match name.strip_prefix(FUNCTIONS) {
            Some(module) if crate::functions::is_module_name(module) => (self.functions_dir.clone(), module),
            None if name == RULES => {
                let dir = self.rules_file.parent().map(PathBuf::from).unwrap_or_default();
                let file = self.rules_file.file_name().and_then(|name| name.to_str()).unwrap_or(RULES);
                (dir, file)
            }
            _ => anyhow::bail!("a deployment of an unknown file `{name}`"),
        };
        match source {
            Some(source) => crate::functions::write_file(&dir, file, source)?,
            None => match std::fs::remove_file(dir.join(file)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
                _ => {}
            },
        }
        Ok(())
    }
}
