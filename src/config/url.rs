//! The connection string: read once, checked, and never printed with its password.

use std::fmt;

use super::{bad, ConfigError, DatabaseArgs};

/// A database URL whose password cannot be printed by accident: `Debug` and `Display` redact it.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL with its secret, for the connector only.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The URL with the password (and any `password=` parameter) replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Redacts `user:password@` and `password=...` from a connection string, whatever its shape.
pub fn redact_url(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (head, query) = match raw.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (raw, None),
    };
    match (head.find("://"), head.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &head[scheme_end + 3..at];
            out.push_str(&head[..scheme_end + 3]);
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&head[at..]);
        }
        _ => out.push_str(head),
    }
    if let Some(query) = query {
        out.push('?');
        let parts: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

/// Connection parameters sqlx understands. Anything else is refused up front: sqlx would log an
/// unknown parameter together with its value, which may be a secret.
const KNOWN_URL_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

pub(super) fn database_url(args: &DatabaseArgs) -> Result<DatabaseUrl, ConfigError> {
    let raw = match (&args.database_url, &args.database_url_file) {
        (Some(url), Some(_)) if !url.trim().is_empty() => {
            return Err(bad("--database-url", "set either --database-url or --database-url-file, not both"))
        }
        (Some(url), _) if !url.trim().is_empty() => url.trim().to_string(),
        (_, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| bad("--database-url-file", format!("cannot read {}: {e}", path.display())))?
            .trim()
            .to_string(),
        _ => return Err(bad("--database-url", "required (or --database-url-file / DATABASE_URL / DATABASE_URL_FILE)")),
    };
    let url = DatabaseUrl(raw);
    let s = url.expose_secret();
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err(bad("--database-url", format!("{} must start with postgres:// or postgresql://", url.redacted())));
    }
    if let Some((_, query)) = s.split_once('?') {
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let key = kv.split_once('=').map_or(kv, |(k, _)| k);
            let known = KNOWN_URL_PARAMS.contains(&key) || key.starts_with("options[");
            if !known {
                return Err(bad("--database-url", format!("unknown connection parameter {key:?}")));
            }
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_userinfo_and_password_parameters() {
        let url = "postgres://app:s3cr3t@db:6543/x?sslmode=require&password=hunter2";
        let r = redact_url(url);
        assert!(!r.contains("s3cr3t") && !r.contains("hunter2"), "{r}");
        assert_eq!(r, "postgres://app:***@db:6543/x?sslmode=require&password=***");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }
}
