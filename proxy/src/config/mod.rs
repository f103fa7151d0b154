//! Proxy settings: the YAML file (conf/switchyard.yaml), its defaults and
//! validation. Unknown fields are errors, as in kube-proxy's
//! KubeProxyConfiguration; every error names the file and the field.

mod duration;
mod l7;
mod model;
mod node_ports;

use std::path::{Path, PathBuf};

pub use duration::{HumanDuration, parse_duration};
pub use l7::L7Config;
pub use model::{
    AdminConfig, Config, ConfigMapRef, DataplaneConfig, InterceptConfig, IoMode, LogConfig,
    LogFormat, PolicyConfig, SourceConfig, SourceKind, UringEngine,
};
pub use node_ports::{NodePortAddress, network};

/// Largest config file we read; a config is a few hundred bytes.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: file is {size} bytes; a config file may be at most {MAX_CONFIG_BYTES} bytes")]
    TooLarge { file: PathBuf, size: u64 },
    #[error("{file}: {field}: {message}")]
    Field {
        file: PathBuf,
        field: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            file: file.to_owned(),
            source,
        };
        let size = std::fs::metadata(file).map_err(read_err)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                file: file.to_owned(),
                size,
            });
        }
        let text = std::fs::read_to_string(file).map_err(read_err)?;
        Self::parse(&text, file)
    }

    /// Parses and validates config text; `file` only names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let field_err = |field: String, message: String| ConfigError::Field {
            file: file.to_owned(),
            field,
            message,
        };
        // An empty file means "all defaults", as an empty ConfigMap key would.
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = match e.path().to_string() {
                    p if p == "." => "(document)".to_owned(),
                    p => p,
                };
                field_err(field, e.into_inner().to_string())
            })?
        };
        config
            .validate()
            .map_err(|(field, message)| field_err(field.to_owned(), message))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
