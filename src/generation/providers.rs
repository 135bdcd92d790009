//! Named model providers: the only place that says where a worker sends which API key.
//!
//! A spec picks a provider by name (`provider = "local"`); what the name means, its base
//! URL and the environment variable whose key goes with it, comes from a providers file
//! given to the worker (and to the server, which refuses specs naming a provider it does
//! not know). A spec that could name a URL or a variable could have any worker send any
//! of its environment's secrets to a listener of the spec author's choosing.
//!
//! ```toml
//! [providers.local]
//! base_url = "http://127.0.0.1:11434/v1"
//! api_key_env = "OLLAMA_API_KEY"   # optional: without it no key is sent
//! timeout = "10m"                  # optional (default 5 minutes)
//! ```
//!
//! `openrouter` is built in (`https://openrouter.ai/api/v1` with `OPENROUTER_API_KEY`);
//! a file that defines `[providers.openrouter]` replaces it.

use super::provider::ProviderConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The provider a spec gets when it names none.
pub const DEFAULT_PROVIDER: &str = "openrouter";

#[derive(Debug, thiserror::Error)]
pub enum ProvidersError {
    #[error("cannot read the providers file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: providers.{name}: {message}")]
    Invalid {
        file: String,
        name: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: String,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

/// The providers one process knows, by name.
#[derive(Debug, Clone)]
pub struct Providers {
    by_name: BTreeMap<String, ProviderConfig>,
}

impl Default for Providers {
    fn default() -> Self {
        Self::builtin()
    }
}

/// A provider name as specs and files spell it: what shows in limits and accounting.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The name of an environment variable (the key is in it, never in a file or spec).
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Providers {
    /// Only `openrouter`.
    pub fn builtin() -> Self {
        let mut by_name = BTreeMap::new();
        by_name.insert(DEFAULT_PROVIDER.to_string(), ProviderConfig::openrouter());
        Providers { by_name }
    }

    pub fn load(path: &Path) -> Result<Self, ProvidersError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProvidersError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text)
    }

    /// The built-in providers plus those of a providers file's text (`file` names it in
    /// errors).
    pub fn parse(file: &str, text: &str) -> Result<Self, ProvidersError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ProvidersError::Syntax {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut providers = Self::builtin();
        for (name, p) in raw.providers {
            let invalid = |message: String| ProvidersError::Invalid {
                file: file.to_string(),
                name: name.clone(),
                message,
            };
            if !valid_name(&name) {
                return Err(invalid(
                    "a provider name has 1 to 64 letters, digits, `-`, `_` or `.`".into(),
                ));
            }
            let url = reqwest::Url::parse(&p.base_url)
                .map_err(|e| invalid(format!("base_url `{}`: {e}", p.base_url)))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(format!(
                    "base_url `{}` is not an http(s) URL; e.g. base_url = \"http://127.0.0.1:11434/v1\"",
                    p.base_url
                )));
            }
            if let Some(env) = &p.api_key_env {
                if !valid_env_name(env) {
                    // Not echoed: it may be a key pasted into the wrong field.
                    return Err(invalid(
                        "api_key_env must be the name of an environment variable (letters, \
                         digits and `_`), e.g. api_key_env = \"OLLAMA_API_KEY\"; the key \
                         itself goes into that variable, never into a file"
                            .into(),
                    ));
                }
            }
            let timeout = match &p.timeout {
                Some(t) => humantime::parse_duration(t)
                    .map_err(|e| invalid(format!("timeout `{t}`: {e}")))?,
                None => ProviderConfig::openrouter().timeout,
            };
            if timeout.is_zero() {
                return Err(invalid("timeout is 0: give calls some time".into()));
            }
            providers.by_name.insert(
                name.clone(),
                ProviderConfig {
                    name,
                    base_url: p.base_url.trim_end_matches('/').to_string(),
                    api_key_env: p.api_key_env,
                    timeout,
                },
            );
        }
        Ok(providers)
    }

    pub fn get(&self, name: &str) -> Option<&ProviderConfig> {
        self.by_name.get(name)
    }

    /// Every name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_file_adds_named_providers_to_openrouter() {
        let p = Providers::parse(
            "p.toml",
            "[providers.local]\nbase_url = \"http://127.0.0.1:11434/v1/\"\napi_key_env = \"OLLAMA_KEY\"\ntimeout = \"10m\"\n\
             [providers.open]\nbase_url = \"https://llm.example/v1\"\n",
        )
        .unwrap();
        assert_eq!(p.names(), ["local", "open", "openrouter"]);
        let local = p.get("local").unwrap();
        assert_eq!(local.base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(local.api_key_env.as_deref(), Some("OLLAMA_KEY"));
        assert_eq!(local.timeout, Duration::from_secs(600));
        assert_eq!(p.get("open").unwrap().api_key_env, None, "no key is sent");
        assert_eq!(
            p.get("openrouter").unwrap().base_url,
            super::super::provider::OPENROUTER_BASE_URL
        );
    }

    #[test]
    fn bad_entries_are_named_and_keys_are_not_echoed() {
        let bad = |text: &str| Providers::parse("p.toml", text).unwrap_err().to_string();
        let e = bad("[providers.x]\nbase_url = \"file:///etc/passwd\"\n");
        assert!(e.contains("providers.x") && e.contains("http(s)"), "{e}");
        let e = bad("[providers.x]\nbase_url = \"http://h/v1\"\napi_key_env = \"sk-live-123\"\n");
        assert!(e.contains("name of an environment variable"), "{e}");
        assert!(!e.contains("sk-live-123"), "{e}");
        let e = bad("[providers.x]\nbase_url = \"http://h/v1\"\napi_key = \"sk\"\n");
        assert!(e.contains("api_key"), "{e}");
        let e = bad("[providers.\"a b\"]\nbase_url = \"http://h/v1\"\n");
        assert!(e.contains("provider name"), "{e}");
        let e = bad("[providers.x]\nbase_url = \"http://h/v1\"\ntimeout = \"soon\"\n");
        assert!(e.contains("timeout"), "{e}");
    }
}
