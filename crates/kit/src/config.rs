//! Configuration: embedded defaults, then one optional TOML file, then
//! `TESSERA_...` environment variables (`__` separates sections:
//! `TESSERA_IDENTITY__DATABASE_URL` sets `identity.database_url`).
//!
//! The kit owns the sections every process shares ([`Common`]); each service
//! reads its own section with [`Config::section`].

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Value;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Environment variables starting with this prefix override the file.
pub const ENV_PREFIX: &str = "TESSERA_";

/// The most clock skew a token check may forgive (RFC 8725 practice).
pub const AUTH_LEEWAY_S_MAX: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The merged configuration sources of one process, and how to read them
/// again ([`Config::reloaded`]).
#[derive(Clone)]
pub struct Config {
    figment: Figment,
    source: Source,
    /// Keys set by [`Config::with`], in order.
    overrides: Vec<(String, Value)>,
}

#[derive(Clone)]
enum Source {
    /// An optional file, then the environment.
    Files(Option<PathBuf>),
    /// TOML text alone.
    Text(String),
}

impl Config {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::read(Source::Files(file.map(Path::to_owned)), Vec::new())
    }

    /// Builds a configuration from TOML text alone (tests, simulation).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::read(Source::Text(text.to_owned()), Vec::new())
    }

    /// Overrides one key (dotted for sections) above every other source:
    /// what a command-line flag does.
    pub fn with(self, key: &str, value: impl serde::Serialize) -> Result<Self, ConfigError> {
        let value = Value::serialize(value).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut overrides = self.overrides;
        overrides.push((key.to_owned(), value));
        Self::read(self.source, overrides)
    }

    /// The same sources read again: the file as it is now, the environment,
    /// then the same overrides.
    pub fn reloaded(&self) -> Result<Self, ConfigError> {
        Self::read(self.source.clone(), self.overrides.clone())
    }

    /// The file this configuration was read from, if any.
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            Source::Files(file) => file.as_deref(),
            Source::Text(_) => None,
        }
    }

    fn read(source: Source, overrides: Vec<(String, Value)>) -> Result<Self, ConfigError> {
        let mut figment = match &source {
            Source::Files(file) => {
                let mut figment = Figment::new();
                if let Some(path) = file {
                    if !path.is_file() {
                        return Err(ConfigError::File {
                            path: path.to_owned(),
                            reason: "not found or not a file".into(),
                        });
                    }
                    figment = figment.merge(Toml::file(path));
                }
                figment.merge(Env::prefixed(ENV_PREFIX).split("__"))
            }
            Source::Text(text) => Figment::from(Toml::string(text)),
        };
        for (key, value) in &overrides {
            figment = figment.merge(Serialized::default(key, value));
        }
        let config = Self {
            figment,
            source,
            overrides,
        };
        config.common()?;
        Ok(config)
    }

    /// The sections every process shares, validated.
    pub fn common(&self) -> Result<Common, ConfigError> {
        let common: Common = self
            .figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        common.validate()?;
        Ok(common)
    }

    /// One service's own section; absent means all defaults.
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, ConfigError> {
        if !self.figment.contains(name) {
            return Ok(T::default());
        }
        self.figment
            .extract_inner(name)
            .map_err(|e| ConfigError::Invalid(format!("[{name}] {e}")))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Common {
    /// Where embedded stores, keys and `up.json` live.
    pub data_dir: PathBuf,
    /// The event broker: empty for the embedded log in the data dir.
    pub bus_url: String,
    pub log: LogSettings,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    /// The gateways a service instance registers with.
    pub registry: crate::registry::RegistrySettings,
    /// Threads that serve requests in `tessera serve`; 0 means one per
    /// core, 1 a single-threaded runtime.
    pub worker_threads: usize,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./tessera-data"),
            bus_url: String::new(),
            worker_threads: 0,
            log: LogSettings::default(),
            http: HttpSettings::default(),
            auth: AuthSettings::default(),
            registry: crate::registry::RegistrySettings::default(),
        }
    }
}

impl Common {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.leeway_s > AUTH_LEEWAY_S_MAX {
            return Err(ConfigError::Invalid(format!(
                "auth.leeway_s = {} exceeds the maximum of {AUTH_LEEWAY_S_MAX} s",
                self.auth.leeway_s
            )));
        }
        if self.http.body_limit_bytes == 0 {
            return Err(ConfigError::Invalid(
                "http.body_limit_bytes must be > 0".into(),
            ));
        }
        if self.http.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "http.request_timeout_ms must be > 0".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info,sqlx=warn`.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info,sqlx=warn".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// Request bodies larger than this are refused with 413.
    pub body_limit_bytes: usize,
    /// A request still unanswered after this long gets 503.
    pub request_timeout_ms: u64,
    /// On shutdown, in-flight requests get this long to finish.
    pub shutdown_grace_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `iss` of access tokens: identity writes it, everyone checks it.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Where verifiers fetch identity's public keys.
    pub jwks_url: String,
    /// Clock skew forgiven on `exp` and `nbf`; at most 60 s.
    pub leeway_s: u64,
    /// An unknown `kid` refetches the key set at most this often.
    pub jwks_refetch_interval_ms: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "urn:tessera:identity".into(),
            audience: "tessera".into(),
            jwks_url: "http://127.0.0.1:8081/.well-known/jwks.json".into(),
            leeway_s: 30,
            jwks_refetch_interval_ms: 5_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let common = Config::from_toml("").unwrap().common().unwrap();
        assert_eq!(common.http.body_limit_bytes, 65_536);
        assert_eq!(common.auth.leeway_s, 30);
    }

    #[test]
    fn leeway_over_sixty_seconds_is_refused() {
        let err = Config::from_toml("[auth]\nleeway_s = 61").err().unwrap();
        assert!(err.to_string().contains("leeway_s"), "{err}");
    }

    #[test]
    fn reloading_reads_the_file_again_and_keeps_the_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tessera.toml");
        std::fs::write(&file, "[http]\nbody_limit_bytes = 10").unwrap();
        let config = Config::load(Some(&file))
            .unwrap()
            .with("data_dir", "/flag")
            .unwrap();
        assert_eq!(config.file(), Some(file.as_path()));
        std::fs::write(&file, "[http]\nbody_limit_bytes = 20").unwrap();
        let common = config.reloaded().unwrap().common().unwrap();
        assert_eq!(common.http.body_limit_bytes, 20);
        assert_eq!(common.data_dir, PathBuf::from("/flag"));
        std::fs::write(&file, "[http]\nbody_limit_bytes = 0").unwrap();
        assert!(config.reloaded().is_err(), "a bad file is refused");
    }

    #[test]
    fn missing_section_is_default() {
        #[derive(Deserialize, Default)]
        struct Own {
            #[serde(default)]
            port: u16,
        }
        let config = Config::from_toml("data_dir = '/x'").unwrap();
        assert_eq!(config.section::<Own>("own").unwrap().port, 0);
    }
}
