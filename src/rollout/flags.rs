//! The three feature flags, read as the application gets them, and the phase they select.

use std::collections::HashMap;
use std::path::Path;

pub const V3: &str = "FEATURE_ASSIGNMENT_PIPELINE_V3";
pub const SHADOW: &str = "FEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW";
pub const MAX_PARALLEL: &str = "FEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Legacy,
    Shadow,
    Full,
    Invalid,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Legacy, Phase::Shadow, Phase::Full, Phase::Invalid];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Legacy => "legacy",
            Phase::Shadow => "shadow",
            Phase::Full => "full",
            Phase::Invalid => "invalid",
        }
    }
}

/// The raw flag values (None when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Flags {
    #[serde(rename = "FEATURE_ASSIGNMENT_PIPELINE_V3")]
    pub v3: Option<String>,
    #[serde(rename = "FEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW")]
    pub shadow: Option<String>,
    #[serde(rename = "FEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL")]
    pub max_parallel: Option<String>,
}

/// What the flags mean.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PhaseState {
    pub phase: Phase,
    /// Why the phase is `invalid` (bounded label values), empty otherwise.
    pub invalid_reasons: Vec<&'static str>,
    pub max_parallel: Option<u32>,
    pub flags: Flags,
}

/// The usual boolean spellings, any case. None for anything else.
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "y" | "t" => Some(true),
        "false" | "0" | "no" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

impl Flags {
    pub fn from_map(map: &HashMap<String, String>) -> Self {
        Flags {
            v3: map.get(V3).cloned(),
            shadow: map.get(SHADOW).cloned(),
            max_parallel: map.get(MAX_PARALLEL).cloned(),
        }
    }

    pub fn from_env() -> Self {
        Flags {
            v3: std::env::var(V3).ok(),
            shadow: std::env::var(SHADOW).ok(),
            max_parallel: std::env::var(MAX_PARALLEL).ok(),
        }
    }

    /// Reads a dotenv file. An unreadable file is an error; unknown keys are ignored.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Ok(Flags::from_map(&parse_dotenv(&text)))
    }

    /// The phase: unset booleans count as false, as the application treats them.
    pub fn phase(&self) -> PhaseState {
        let mut reasons = Vec::new();
        let v3 = self.v3.as_deref().map_or(Some(false), parse_bool);
        let shadow = self.shadow.as_deref().map_or(Some(false), parse_bool);
        if v3.is_none() {
            reasons.push("v3_not_boolean");
        }
        if shadow.is_none() {
            reasons.push("shadow_not_boolean");
        }
        let max_parallel = match self.max_parallel.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => match s.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    reasons.push("max_parallel_not_integer");
                    None
                }
            },
        };
        let phase = match (v3, shadow) {
            (Some(true), Some(true)) => {
                reasons.push("both_enabled");
                Phase::Invalid
            }
            (Some(false), Some(true)) => Phase::Shadow,
            (Some(true), Some(false)) => Phase::Full,
            (Some(false), Some(false)) => Phase::Legacy,
            _ => Phase::Invalid,
        };
        let phase = if reasons.is_empty() { phase } else { Phase::Invalid };
        PhaseState { phase, invalid_reasons: reasons, max_parallel, flags: self.clone() }
    }
}

/// Parses dotenv text as `vercel env pull` writes it: `KEY="value"`, comments, blank lines, an
/// optional `export ` prefix, single or double quotes (double quotes understand `\n`, `\"`, `\\`),
/// and `#` comments after unquoted values. Malformed lines are skipped.
pub fn parse_dotenv(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let value = value.trim();
        let parsed = if let Some(rest) = value.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = rest.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('r') => s.push('\r'),
                        Some('t') => s.push('\t'),
                        Some(other) => s.push(other),
                        None => break,
                    },
                    c => s.push(c),
                }
            }
            if !closed {
                continue;
            }
            s
        } else if let Some(rest) = value.strip_prefix('\'') {
            match rest.find('\'') {
                Some(end) => rest[..end].to_string(),
                None => continue,
            }
        } else {
            let v = match value.find(" #") {
                Some(i) => &value[..i],
                None => value,
            };
            v.trim().to_string()
        };
        out.insert(key.to_string(), parsed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(v3: Option<&str>, shadow: Option<&str>, mp: Option<&str>) -> Flags {
        Flags { v3: v3.map(Into::into), shadow: shadow.map(Into::into), max_parallel: mp.map(Into::into) }
    }

    #[test]
    fn every_flag_combination_selects_its_phase() {
        for (v3, shadow, phase) in [
            ("false", "true", Phase::Shadow),
            ("true", "false", Phase::Full),
            ("false", "false", Phase::Legacy),
            ("true", "true", Phase::Invalid),
            ("TRUE", "0", Phase::Full),
            ("No", "On", Phase::Shadow),
            ("yes", "off", Phase::Full),
            ("maybe", "false", Phase::Invalid),
            ("false", "", Phase::Invalid),
        ] {
            assert_eq!(flags(Some(v3), Some(shadow), Some("3")).phase().phase, phase, "{v3} {shadow}");
        }
        assert_eq!(flags(None, None, None).phase().phase, Phase::Legacy);
        let s = flags(Some("true"), Some("true"), Some("x")).phase();
        assert_eq!(s.invalid_reasons, vec!["max_parallel_not_integer", "both_enabled"]);
        assert_eq!(flags(Some("true"), Some("false"), Some(" 3 ")).phase().max_parallel, Some(3));
    }

    #[test]
    fn dotenv_as_vercel_writes_it() {
        let text = "# Created by Vercel CLI\n\nFEATURE_ASSIGNMENT_PIPELINE_V3=\"true\"\nexport FEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW='false'\nFEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL=3 # three\nOTHER=\"a\\\"b\\nc\"\nbroken line\nUNCLOSED=\"x\n";
        let m = parse_dotenv(text);
        assert_eq!(m[V3], "true");
        assert_eq!(m[SHADOW], "false");
        assert_eq!(m[MAX_PARALLEL], "3");
        assert_eq!(m["OTHER"], "a\"b\nc");
        assert!(!m.contains_key("UNCLOSED"));
        assert_eq!(Flags::from_map(&m).phase().phase, Phase::Full);
    }
}
