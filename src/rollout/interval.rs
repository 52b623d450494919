//! How sure a ratio criterion is: the Wilson score interval of a binomial proportion, and whether
//! the whole interval lies on one side of the threshold.
//!
//! Wilson, E. B. (1927). "Probable inference, the law of succession, and statistical inference".
//! Journal of the American Statistical Association 22 (158): 209-212. For `k` successes in `n`
//! trials and `z` the standard normal quantile at `1 - (1 - confidence) / 2`:
//!
//! ```text
//! low, high = (k + z²/2 ∓ z·sqrt(k·(n - k)/n + z²/4)) / (n + z²)
//! ```
//!
//! (the same as `(p̂ + z²/2n ∓ z·sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n)` with `p̂ = k/n`, multiplied
//! through by `n`). Unlike the normal-approximation ("Wald") interval it stays inside [0, 1], is
//! not empty at `k = 0` or `k = n`, and keeps close to its nominal coverage at small `n`
//! (Newcombe 1998, Statistics in Medicine 17: 857-872, whose worked examples the unit tests use).
//! The normal quantile is Wichura's algorithm AS 241 ([`normal_quantile`]); the test kit
//! cross-checks the intervals of the real `verdict` JSON against `scipy.stats`.

use serde::Serialize;

/// A two-sided confidence interval for a proportion (ratio 0..1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Lower bound, ratio 0..1.
    pub low: f64,
    /// Upper bound, ratio 0..1.
    pub high: f64,
    /// The confidence level the interval was computed at, ratio in (0, 1) (`--confidence`).
    pub confidence: f64,
}

/// Whether the data settle a ratio criterion: `conclusive` when the pass/fail comparison gives the
/// same answer for every value of the interval, `inconclusive` when the interval straddles the
/// threshold (more data could still change the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strength {
    Conclusive,
    Inconclusive,
}

impl Strength {
    /// The JSON value and metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Strength::Conclusive => "conclusive",
            Strength::Inconclusive => "inconclusive",
        }
    }
}

/// The Wilson score interval for `successes` out of `trials` at `confidence` (0 < confidence < 1).
///
/// With no trials there is no information: the interval is the whole range `[0, 1]`. At
/// `successes == 0` the lower bound is exactly 0 and at `successes == trials` the upper bound is
/// exactly 1 (the formula gives them up to rounding). `successes` above `trials` (a numerator
/// counted from other rows than the denominator) is judged as `trials`, as the ratio gauges cap
/// the ratio at 1.
pub fn wilson(successes: u64, trials: u64, confidence: f64) -> Interval {
    if trials == 0 {
        return Interval { low: 0.0, high: 1.0, confidence };
    }
    let k = successes.min(trials) as f64;
    let n = trials as f64;
    let z = normal_quantile(1.0 - (1.0 - confidence) / 2.0);
    let z2 = z * z;
    let center = k + z2 / 2.0;
    let half = z * (k * (n - k) / n + z2 / 4.0).sqrt();
    let denom = n + z2;
    let low = if k == 0.0 { 0.0 } else { ((center - half) / denom).clamp(0.0, 1.0) };
    let high = if k == n { 1.0 } else { ((center + half) / denom).clamp(0.0, 1.0) };
    Interval { low, high, confidence }
}

/// The standard normal quantile (inverse CDF) at `p`, 0 < p < 1: Wichura, M. J. (1988), "Algorithm
/// AS 241: The Percentage Points of the Normal Distribution", Applied Statistics 37 (3): 477-484,
/// function PPND16 (relative error about 1e-16). NaN outside (0, 1).
pub fn normal_quantile(p: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) {
        return f64::NAN;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q * poly(&as241::A, r) / poly(&as241::B, r);
    }
    let r = if q < 0.0 { p } else { 1.0 - p };
    let r = (-r.ln()).sqrt();
    let x = if r <= 5.0 {
        let r = r - 1.6;
        poly(&as241::C, r) / poly(&as241::D, r)
    } else {
        let r = r - 5.0;
        poly(&as241::E, r) / poly(&as241::F, r)
    };
    if q < 0.0 {
        -x
    } else {
        x
    }
}

/// `c[0] + c[1]·x + ... + c[7]·x⁷` by Horner's rule.
fn poly(c: &[f64; 8], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &ci| acc * x + ci)
}

/// AS 241 PPND16 coefficients, lowest power first (the denominators' constant term is 1), with
/// the digits Wichura printed so they can be checked against the paper; `f64` keeps ~17 of them.
#[allow(clippy::excessive_precision)]
mod as241 {
    pub(super) const A: [f64; 8] = [
        3.387_132_872_796_366_608,
        1.331_416_678_917_843_774_5e2,
        1.971_590_950_306_551_442_7e3,
        1.373_169_376_550_946_112_5e4,
        4.592_195_393_154_987_145_7e4,
        6.726_577_092_700_870_085_3e4,
        3.343_057_558_358_812_810_5e4,
        2.509_080_928_730_122_672_7e3,
    ];
    pub(super) const B: [f64; 8] = [
        1.0,
        4.231_333_070_160_091_125_2e1,
        6.871_870_074_920_579_083e2,
        5.394_196_021_424_751_107_7e3,
        2.121_379_430_158_659_586_7e4,
        3.930_789_580_009_271_061e4,
        2.872_908_573_572_194_267_4e4,
        5.226_495_278_852_854_561e3,
    ];
    pub(super) const C: [f64; 8] = [
        1.423_437_110_749_683_577_34,
        4.630_337_846_156_545_295_9,
        5.769_497_221_460_691_405_5,
        3.647_848_324_763_204_605_04,
        1.270_458_252_452_368_382_58,
        2.417_807_251_774_506_117_7e-1,
        2.272_384_498_926_918_458_33e-2,
        7.745_450_142_783_414_076_4e-4,
    ];
    pub(super) const D: [f64; 8] = [
        1.0,
        2.053_191_626_637_758_821_87,
        1.676_384_830_183_803_849_4,
        6.897_673_349_851_000_045_5e-1,
        1.481_039_764_274_800_745_9e-1,
        1.519_866_656_361_645_719_66e-2,
        5.475_938_084_995_344_946e-4,
        1.050_750_071_644_416_843_24e-9,
    ];
    pub(super) const E: [f64; 8] = [
        6.657_904_643_501_103_777_2,
        5.463_784_911_164_114_369_9,
        1.784_826_539_917_291_335_8,
        2.965_605_718_285_048_912_3e-1,
        2.653_218_952_657_612_309_3e-2,
        1.242_660_947_388_078_438_6e-3,
        2.711_555_568_743_487_578_15e-5,
        2.010_334_399_292_288_132_65e-7,
    ];
    pub(super) const F: [f64; 8] = [
        1.0,
        5.998_322_065_558_879_376_9e-1,
        1.369_298_809_227_358_053_1e-1,
        1.487_536_129_085_061_485_25e-2,
        7.868_691_311_456_132_591e-4,
        1.846_318_317_510_054_681_8e-5,
        1.421_511_758_316_445_888_7e-7,
        2.044_263_103_389_939_785_64e-15,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_match_the_familiar_critical_values() {
        // The familiar critical values (90%, 95%, 99% two-sided and 90% one-sided), each of the
        // three rational functions of AS 241 at least once.
        for (p, z) in [
            (0.5, 0.0),
            (0.9, 1.281_551_565_544_600_4),
            (0.95, 1.644_853_626_951_472_2),
            (0.975, 1.959_963_984_540_054),
            (0.995, 2.575_829_303_548_900_4),
        ] {
            assert!((normal_quantile(p) - z).abs() < 1e-14, "p={p}: {}", normal_quantile(p));
            assert!((normal_quantile(1.0 - p) + z).abs() < 1e-14, "p={}", 1.0 - p);
        }
        // Past r = 5 (p < exp(-25)): the third rational function.
        assert!((normal_quantile(1e-12) + 7.034_483_825_301_13).abs() < 1e-9);
        assert!(normal_quantile(0.0).is_nan() && normal_quantile(1.0).is_nan());
    }

    #[test]
    fn wilson_intervals_equal_newcombes_worked_examples() {
        // Newcombe (1998), Table I, method 3 (score interval without continuity correction), 95%.
        for (k, n, low, high) in
            [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)]
        {
            let i = wilson(k, n, 0.95);
            assert!((i.low - low).abs() < 5e-5 && (i.high - high).abs() < 5e-5, "{k}/{n}: {i:?}");
        }
    }

    #[test]
    fn wilson_edges_zero_trials_and_all_or_nothing() {
        assert_eq!(wilson(0, 0, 0.95), Interval { low: 0.0, high: 1.0, confidence: 0.95 });
        let none = wilson(0, 100, 0.95);
        assert_eq!(none.low, 0.0);
        // The issue's example: 0 manual reviews in 100 starts still allows ~3.7%.
        assert!((none.high - 0.036_994).abs() < 1e-6, "{none:?}");
        let all = wilson(100, 100, 0.95);
        assert_eq!(all.high, 1.0);
        assert!((all.low - (1.0 - none.high)).abs() < 1e-15, "symmetric in k <-> n - k");
        // Higher confidence, wider interval; more data, narrower.
        assert!(wilson(5, 100, 0.99).high > wilson(5, 100, 0.95).high);
        assert!(wilson(50, 1000, 0.95).high < wilson(5, 100, 0.95).high);
        // A numerator above the denominator is judged as all successes.
        assert_eq!(wilson(7, 5, 0.95), wilson(5, 5, 0.95));
    }
}
