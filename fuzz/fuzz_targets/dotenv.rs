//! The dotenv flags parser and the phase it selects: never panics, keys are plain names, a value
//! written the way `vercel env pull` quotes it reads back exactly, and a phase is `invalid` exactly
//! when it has a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollout_exporter::rollout::flags::{parse_dotenv, MAX_PARALLEL, SHADOW, V3};
use rollout_exporter::rollout::{Flags, Phase};

/// Double-quoted dotenv value, escaped as the parser reads it.
fn quoted(v: &str) -> String {
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // Arbitrary text: plain keys only, and whatever the flags say, a consistent phase.
    let map = parse_dotenv(&text);
    for key in map.keys() {
        assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{key:?}");
    }
    let state = Flags::from_map(&map).phase();
    assert_eq!(state.phase == Phase::Invalid, !state.invalid_reasons.is_empty(), "{state:?}");
    assert_eq!(parse_dotenv(&text), map, "parsing is deterministic");

    // The input as the three flags' values: each reads back exactly.
    let third = text.chars().count() / 3;
    let v3: String = text.chars().take(third).collect();
    let shadow: String = text.chars().skip(third).take(third).collect();
    let max_parallel: String = text.chars().skip(2 * third).collect();
    let file = format!(
        "# Created by Vercel CLI\n{V3}={}\nexport {SHADOW}={}\n{MAX_PARALLEL}={}\n",
        quoted(&v3),
        quoted(&shadow),
        quoted(&max_parallel)
    );
    let m = parse_dotenv(&file);
    assert_eq!(m.get(V3), Some(&v3), "{file:?}");
    assert_eq!(m.get(SHADOW), Some(&shadow), "{file:?}");
    assert_eq!(m.get(MAX_PARALLEL), Some(&max_parallel), "{file:?}");
    let flags = Flags::from_map(&m);
    let state = flags.phase();
    assert_eq!(state.phase == Phase::Invalid, !state.invalid_reasons.is_empty());
    assert_eq!(state.flags, flags);
});
