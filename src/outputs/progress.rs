//! Progress on stderr for the long commands (`backtest`, `backfill`): drawn only when stderr is a
//! terminal (indicatif hides its bars otherwise), so logs and CI output stay quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::time::UnixMicros;

/// A spinner while one long step (the load) runs.
pub(super) fn spinner(what: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_message(what);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// A bar over the steps from `from` to `to` (both included).
pub(super) fn steps(from: UnixMicros, to: UnixMicros, step_us: i64) -> ProgressBar {
    let n = ((to.0 - from.0) / step_us.max(1) + 1).max(0) as u64;
    let bar = ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} steps {eta}") {
        bar.set_style(style);
    }
    bar
}
