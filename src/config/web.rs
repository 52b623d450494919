//! `--web-config-file`: TLS and basic auth in the Prometheus exporter-toolkit format.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths are relative to this file
//!   key_file: server.key
//!   min_version: TLS12             # TLS12 (default) or TLS13
//!   client_auth_type: NoClientCert # or RequireAndVerifyClientCert (with client_ca_file)
//!   client_ca_file: clients-ca.crt
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//! Unknown keys are an error, as in exporter-toolkit. The file is read once at start.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::header;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("invalid --web-config-file {path}: {message}")]
pub struct WebConfigError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: HashMap<String, String>,
    http_server_config: Option<RawHttp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: String,
    key_file: String,
    min_version: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted for compatibility; HTTP/2 is not served.
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default)]
    headers: HashMap<String, String>,
}

/// The validated web configuration.
#[derive(Clone)]
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Option<Arc<BasicAuth>>,
    pub headers: Vec<(header::HeaderName, header::HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("basic_auth_users", &self.auth.as_ref().map(|a| a.users.len()))
            .finish()
    }
}

fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl WebConfig {
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let err = |message: String| WebConfigError { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = match raw.tls_server_config {
            None => None,
            Some(t) => Some(Arc::new(tls_config(base, &t).map_err(err)?)),
        };
        let auth = if raw.basic_auth_users.is_empty() {
            None
        } else {
            for (user, hash) in &raw.basic_auth_users {
                if hash.parse::<bcrypt::HashParts>().is_err() {
                    return Err(err(format!("basic_auth_users.{user} is not a bcrypt hash")));
                }
            }
            Some(Arc::new(BasicAuth::new(raw.basic_auth_users)))
        };
        let mut headers = Vec::new();
        for (k, v) in raw.http_server_config.map(|h| h.headers).unwrap_or_default() {
            let name = header::HeaderName::try_from(k.as_str()).map_err(|_| err(format!("bad header name {k:?}")))?;
            let value =
                header::HeaderValue::try_from(v.as_str()).map_err(|_| err(format!("bad value for header {k}")))?;
            headers.push((name, value));
        }
        Ok(WebConfig { tls, auth, headers })
    }
}

fn tls_config(base: &Path, t: &RawTls) -> Result<rustls::ServerConfig, String> {
    let cert_path = resolve(base, &t.cert_file);
    let key_path = resolve(base, &t.key_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| format!("cert_file {}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert_file {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("cert_file {} holds no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| format!("key_file {}: {e}", key_path.display()))?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(other) => return Err(format!("min_version {other:?} is not supported (TLS12 or TLS13)")),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match t.client_auth_type.as_deref() {
        None | Some("NoClientCert") => builder.with_no_client_auth(),
        Some("RequireAndVerifyClientCert") => {
            let ca = t.client_ca_file.as_ref().ok_or("RequireAndVerifyClientCert needs client_ca_file")?;
            let ca_path = resolve(base, ca);
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&ca_path).map_err(|e| format!("client_ca_file: {e}"))? {
                roots
                    .add(c.map_err(|e| format!("client_ca_file: {e}"))?)
                    .map_err(|e| format!("client_ca_file: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        Some(other) => {
            return Err(format!(
                "client_auth_type {other:?} is not supported (NoClientCert or RequireAndVerifyClientCert)"
            ))
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| format!("certificate and key: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Basic-auth users with bcrypt hashes. bcrypt is deliberately slow, so verified credentials are
/// remembered (as a keyed hash, never the password) for the life of the process.
pub struct BasicAuth {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<u64>>,
    keys: RandomState,
}

/// Checking an unknown user still costs one bcrypt verification, so timing does not reveal
/// which users exist.
const DUMMY_HASH: &str = "$2y$10$yF5ucuB6n6n0N0ZJ5kJrBuF6Y2lYfOiCVx1cR1iK0vV3p3m0pQZ4W";
const MAX_REMEMBERED: usize = 1024;

impl BasicAuth {
    fn new(users: HashMap<String, String>) -> Self {
        BasicAuth { users, verified: Mutex::new(HashSet::new()), keys: RandomState::new() }
    }

    fn check(&self, user: &str, password: &str) -> bool {
        let key = self.keys.hash_one((user, password));
        if self.verified.lock().expect("auth cache lock").contains(&key) {
            return true;
        }
        let ok = match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, DUMMY_HASH);
                false
            }
        };
        if ok {
            let mut cache = self.verified.lock().expect("auth cache lock");
            if cache.len() >= MAX_REMEMBERED {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }

    /// Checks an `Authorization: Basic base64(user:password)` header value (None: no header).
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) else {
            return false;
        };
        let Some(decoded) = base64_decode(encoded.trim()) else { return false };
        let Ok(text) = String::from_utf8(decoded) else { return false };
        let Some((user, password)) = text.split_once(':') else { return false };
        self.check(user, password)
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
            3 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]),
            2 => out.push((n >> 16) as u8),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_basic_credentials() {
        assert_eq!(base64_decode("YWxpY2U6czNjcjN0").unwrap(), b"alice:s3cr3t");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("!!").is_none());
    }

    #[test]
    fn bcrypt_users_are_checked_and_remembered() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = BasicAuth::new(HashMap::from([("prom".to_string(), hash)]));
        assert!(auth.check("prom", "right"));
        assert!(auth.check("prom", "right"));
        assert!(!auth.check("prom", "wrong"));
        assert!(!auth.check("nobody", "right"));
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
    }
}
