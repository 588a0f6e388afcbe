//! Layered configuration: defaults < file < environment < flags.
//!
//! A daemon describes its config as a serde struct with `Default`. [`Layers`] starts from the
//! defaults (serialized to TOML), merges a TOML file, then environment variables and flags given
//! as dotted paths (`storage.max_capacity_gb`), and deserializes the result. Env and flag values
//! are strings; each is parsed as the type the default has at that path, so `GRPC_PORT=abc` is a
//! clear error naming the variable, not a silent default.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: cannot set {key} to {value:?}: expected {expected}")]
    BadValue {
        origin: String,
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("{origin}: unknown setting {key}")]
    UnknownKey { origin: String, key: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The merged configuration tree being built.
#[derive(Debug, Clone)]
pub struct Layers {
    tree: Value,
    defaults: Value,
}

impl Layers {
    pub fn from_defaults<T: Serialize>(defaults: &T) -> Self {
        let tree = Value::try_from(defaults).expect("a config struct serializes to a TOML table");
        Layers {
            defaults: tree.clone(),
            tree,
        }
    }

    /// Merges a TOML file over the current tree. Unknown keys are refused (typos must not be
    /// ignored silently), except sections listed in `ignored` (e.g. documented keys that a
    /// daemon does not use).
    pub fn file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let value: Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        merge(
            &mut self.tree,
            &self.defaults,
            value,
            &path.display().to_string(),
            "",
        )?;
        Ok(self)
    }

    /// Applies `value` at dotted `key`, typed like the default at that key.
    pub fn set(mut self, origin: &str, key: &str, value: &str) -> Result<Self, ConfigError> {
        let template = lookup(&self.defaults, key).ok_or_else(|| ConfigError::UnknownKey {
            origin: origin.into(),
            key: key.into(),
        })?;
        let typed = parse_like(template, value).map_err(|expected| ConfigError::BadValue {
            origin: origin.into(),
            key: key.into(),
            value: value.into(),
            expected,
        })?;
        set_path(&mut self.tree, key, typed);
        Ok(self)
    }

    /// Applies every `(ENV_VAR, dotted.key)` pair whose variable is set and non-empty.
    pub fn env(mut self, map: &[(&str, &str)]) -> Result<Self, ConfigError> {
        for (var, key) in map {
            if let Ok(v) = std::env::var(var)
                && !v.is_empty()
            {
                self = self.set(&format!("environment variable {var}"), key, &v)?;
            }
        }
        Ok(self)
    }

    pub fn build<T: DeserializeOwned>(self) -> Result<T, ConfigError> {
        self.tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
    }
}

fn merge(
    dst: &mut Value,
    defaults: &Value,
    src: Value,
    origin: &str,
    prefix: &str,
) -> Result<(), ConfigError> {
    match (dst, src) {
        (Value::Table(d), Value::Table(s)) => {
            for (k, v) in s {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let def = defaults.as_table().and_then(|t| t.get(&k));
                match (d.get_mut(&k), def) {
                    (Some(existing), Some(def)) => merge(existing, def, v, origin, &key)?,
                    // A table that is empty in the defaults is a free-form map.
                    (None, None) if defaults.as_table().is_some_and(|t| t.is_empty()) => {
                        d.insert(k, v);
                    }
                    _ => {
                        return Err(ConfigError::UnknownKey {
                            origin: origin.into(),
                            key,
                        });
                    }
                }
            }
            Ok(())
        }
        (d, s) => {
            let expected = type_name(d);
            if std::mem::discriminant(d) != std::mem::discriminant(&s)
                && !(d.is_float() && s.is_integer())
            {
                return Err(ConfigError::BadValue {
                    origin: origin.into(),
                    key: prefix.into(),
                    value: s.to_string(),
                    expected,
                });
            }
            *d = if d.is_float() {
                Value::Float(
                    s.as_float()
                        .or(s.as_integer().map(|i| i as f64))
                        .unwrap_or_default(),
                )
            } else {
                s
            };
            Ok(())
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

fn lookup<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.')
        .try_fold(v, |v, part| v.as_table()?.get(part))
}

fn set_path(v: &mut Value, key: &str, new: Value) {
    let mut cur = v;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        cur = cur
            .as_table_mut()
            .expect("path checked against defaults")
            .entry(*part)
            .or_insert(Value::Table(Default::default()));
    }
    if let Some(t) = cur.as_table_mut() {
        t.insert(parts[parts.len() - 1].to_string(), new);
    }
}

fn parse_like(template: &Value, s: &str) -> Result<Value, &'static str> {
    let s = s.trim();
    Ok(match template {
        Value::String(_) => Value::String(s.to_string()),
        Value::Integer(_) => Value::Integer(s.parse().map_err(|_| "an integer")?),
        Value::Float(_) => Value::Float(s.parse().map_err(|_| "a number")?),
        Value::Boolean(_) => Value::Boolean(match s.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err("true or false"),
        }),
        Value::Array(_) => Value::Array(
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.to_string()))
                .collect(),
        ),
        _ => return Err("a value of a settable kind"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Cfg {
        net: Net,
        name: String,
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Net {
        port: u16,
        tls: bool,
        peers: Vec<String>,
        ratio: f64,
    }
    impl Default for Cfg {
        fn default() -> Self {
            Cfg {
                net: Net {
                    port: 1,
                    tls: false,
                    peers: vec![],
                    ratio: 0.5,
                },
                name: "n".into(),
            }
        }
    }

    #[test]
    fn precedence_defaults_file_env_flags() {
        let dir = std::env::temp_dir().join(format!("cyx-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "name = \"file\"\n[net]\nport = 2\nratio = 1\n").unwrap();
        let c: Cfg = Layers::from_defaults(&Cfg::default())
            .file(&f)
            .unwrap()
            .set("env", "net.port", "3")
            .unwrap()
            .set("flag", "net.peers", "a, b")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            c,
            Cfg {
                net: Net {
                    port: 3,
                    tls: false,
                    peers: vec!["a".into(), "b".into()],
                    ratio: 1.0
                },
                name: "file".into()
            }
        );
        std::fs::write(&f, "[net]\nprot = 2\n").unwrap();
        let e = Layers::from_defaults(&Cfg::default()).file(&f).unwrap_err();
        assert!(e.to_string().contains("net.prot"), "{e}");
        std::fs::write(&f, "[net]\nport = \"x\"\n").unwrap();
        assert!(Layers::from_defaults(&Cfg::default()).file(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_name_their_origin() {
        let e = Layers::from_defaults(&Cfg::default())
            .set("environment variable GRPC_PORT", "net.port", "abc")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable GRPC_PORT: cannot set net.port to \"abc\": expected an integer"
        );
        let e = Layers::from_defaults(&Cfg::default())
            .set("x", "net.tls", "maybe")
            .unwrap_err();
        assert!(e.to_string().contains("true or false"));
        // Out of range for the target type is caught at build time.
        let e = Layers::from_defaults(&Cfg::default())
            .set("x", "net.port", "70000")
            .unwrap()
            .build::<Cfg>()
            .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)));
    }
}
