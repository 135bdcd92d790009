//! The comparison of models: per-app scores (security and quality apart, per app and per
//! thousand lines of code), apps that did not run, coverage, and how far the ranking can be
//! trusted (a confidence interval per model, a significance test between neighbours).
//! Every view (`assay compare`, the dashboard's compare page, the HTML report, the models
//! CSV) shows these numbers as they are computed here, rounded here. Pure: no IO.
//!
//! The rules, documented in `docs/ranking.md`:
//! - An app's **security** score is the sum of its security findings weighted by severity
//!   (critical 10, high 5, medium 2, low 1, info 0); its **quality** score the same over its
//!   quality findings. Style findings are counted but weigh nothing.
//! - An app that **did not run** (did not install, start or answer) adds
//!   [`DID_NOT_RUN_PENALTY`] to both of its scores: nothing it was asked for can be used,
//!   and its running behaviour could not be probed, so it must not look cleaner than an app
//!   that ran and was probed. Its static findings count as any app's.
//! - Models are ranked by mean security per app, then mean quality per app, then the
//!   judge's pass rate, then name.

use crate::analysis::finding::{Category, Finding, Severity};
use crate::results::AppResults;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an app that did not install, start or answer adds to each of its scores: as much
/// as one critical finding.
pub const DID_NOT_RUN_PENALTY: f64 = 10.0;

/// Fewer apps than this per model and a difference cannot be told from chance (with 4
/// against 4 the smallest two-sided permutation p-value is 2/70 ≈ 0.03).
pub const SMALL_SAMPLE: usize = 5;

/// Neighbours whose difference has a p-value at or above this are marked as a tie.
pub const TIE_P_VALUE: f64 = 0.05;

const BOOTSTRAP_RESAMPLES: usize = 5_000;
const PERMUTATIONS: usize = 20_000;
/// Fixed, so that the same results give the same intervals and p-values every time.
const SEED: u64 = 0x5eed_a55a;

pub fn weight(severity: Severity) -> f64 {
    match severity {
        Severity::Critical => 10.0,
        Severity::High => 5.0,
        Severity::Medium => 2.0,
        Severity::Low => 1.0,
        Severity::Info => 0.0,
    }
}

/// Rounded as every view shows it.
pub fn rounded(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One app's weighted findings by category.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AppScores {
    pub security: f64,
    pub quality: f64,
    /// Findings per category (`security`, `quality`, `style`, `app_failure`).
    pub by_category: BTreeMap<String, usize>,
}

impl AppScores {
    pub fn of(findings: &[Finding], did_not_run: bool) -> AppScores {
        let mut s = AppScores::default();
        for f in findings {
            let category = f.category();
            *s.by_category
                .entry(category.as_str().to_string())
                .or_default() += 1;
            match category {
                Category::Security => s.security += weight(f.severity),
                Category::Quality => s.quality += weight(f.severity),
                Category::Style | Category::AppFailure => {}
            }
        }
        if did_not_run {
            s.security += DID_NOT_RUN_PENALTY;
            s.quality += DID_NOT_RUN_PENALTY;
        }
        s
    }
}

/// One model's standing across the apps it generated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelStanding {
    pub model: String,
    /// 1 for the best; models marked `tie` with the next share nothing but a note.
    pub rank: usize,
    pub apps: usize,
    /// Apps that did not install, start or answer: the model's own failures, counted in its
    /// scores (see [`DID_NOT_RUN_PENALTY`]) and shown apart.
    pub did_not_run: usize,
    /// Apps analyzed fully, partially, not at all.
    pub coverage: Coverage,
    /// Non-blank lines of code over its apps whose size is known.
    pub code_lines: u64,
    /// Findings per severity, summed over its apps (every category).
    pub by_severity: BTreeMap<String, usize>,
    /// Findings per category, summed over its apps.
    pub by_category: BTreeMap<String, usize>,
    /// Mean weighted security findings per app: lower is better.
    pub security_score: f64,
    /// 95% bootstrap interval of that mean (`None` with one app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_ci: Option<[f64; 2]>,
    /// Weighted security findings per thousand lines of code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_per_kloc: Option<f64>,
    pub quality_score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_ci: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_per_kloc: Option<f64>,
    /// Mean of the judge's pass rates over the apps that were judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_rate: Option<f64>,
    /// Median over its apps of the load test's p50 latency and throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<f64>,
    /// Per template: its app's security score (the heatmap's row).
    pub by_template: BTreeMap<String, f64>,
    /// Fewer than [`SMALL_SAMPLE`] apps.
    pub small_sample: bool,
    /// How its security scores differ from the next model's in the ranking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versus_next: Option<Versus>,
    /// What every view prints next to the model: a tie with the next, a small sample.
    #[serde(default)]
    pub note: String,
}

impl ModelStanding {
    fn make_note(&self) -> String {
        let mut notes = Vec::new();
        if let Some(v) = self.versus_next.as_ref().filter(|v| v.tie) {
            notes.push(format!("tie with {} (p={:.2})", v.model, v.p_value));
        }
        if self.small_sample {
            notes.push(format!("small sample ({} apps)", self.apps));
        }
        notes.join("; ")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Coverage {
    pub full: usize,
    pub partial: usize,
    pub none: usize,
}

/// A two-sided permutation test of the difference of mean security per app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Versus {
    pub model: String,
    pub p_value: f64,
    /// `p_value` ≥ [`TIE_P_VALUE`]: the order of the two may be chance.
    pub tie: bool,
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let mid = xs.len() / 2;
    Some(if xs.len() % 2 == 0 {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    })
}

/// 95% percentile bootstrap interval of the mean.
pub fn bootstrap_ci(xs: &[f64]) -> Option<[f64; 2]> {
    if xs.len() < 2 {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            (0..xs.len())
                .map(|_| xs[rng.gen_range(0..xs.len())])
                .sum::<f64>()
                / xs.len() as f64
        })
        .collect();
    means.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round()) as usize];
    Some([rounded(at(0.025)), rounded(at(0.975))])
}

/// Two-sided p-value that `a` and `b` come from one distribution, by the difference of
/// their means: exact over every split when there are few, else by random splits.
pub fn permutation_p_value(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let (n, k) = (pooled.len(), a.len());
    let total: f64 = pooled.iter().sum();
    let observed = (mean(a) - mean(b)).abs();
    // Differences within rounding of the observed one count as "as extreme".
    let extreme = |sum_a: f64| {
        let d = (sum_a / k as f64 - (total - sum_a) / (n - k) as f64).abs();
        d >= observed - 1e-9
    };
    if binomial(n, k) <= PERMUTATIONS as f64 {
        let (mut hits, mut all) = (0u64, 0u64);
        let mut pick: Vec<usize> = (0..k).collect();
        loop {
            all += 1;
            if extreme(pick.iter().map(|&i| pooled[i]).sum()) {
                hits += 1;
            }
            // Next k-combination of 0..n in lexicographic order.
            let Some(i) = (0..k).rev().find(|&i| pick[i] < n - k + i) else {
                break;
            };
            pick[i] += 1;
            for j in i + 1..k {
                pick[j] = pick[j - 1] + 1;
            }
        }
        return hits as f64 / all as f64;
    }
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut shuffled = pooled.clone();
    let mut hits = 0usize;
    for _ in 0..PERMUTATIONS {
        // A partial Fisher–Yates shuffle: the first k are a uniform random subset.
        for i in 0..k {
            let j = rng.gen_range(i..n);
            shuffled.swap(i, j);
        }
        if extreme(shuffled[..k].iter().sum()) {
            hits += 1;
        }
    }
    (hits + 1) as f64 / (PERMUTATIONS + 1) as f64
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k.min(n - k)).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// The models ranked (see the module's rules). Apps without a model are left out.
pub fn compare(apps: &[AppResults]) -> Vec<ModelStanding> {
    let mut by_model: BTreeMap<&str, Vec<&AppResults>> = BTreeMap::new();
    for a in apps {
        if let Some(m) = &a.model {
            by_model.entry(m).or_default().push(a);
        }
    }
    let mut security_of: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut out: Vec<ModelStanding> = by_model
        .into_iter()
        .map(|(model, apps)| {
            let mut by_severity = BTreeMap::new();
            let mut by_category = BTreeMap::new();
            for a in &apps {
                for (s, n) in &a.summary.by_severity {
                    *by_severity.entry(s.clone()).or_insert(0) += n;
                }
                for (c, n) in &a.scores.by_category {
                    *by_category.entry(c.clone()).or_insert(0) += n;
                }
            }
            let security: Vec<f64> = apps.iter().map(|a| a.scores.security).collect();
            let quality: Vec<f64> = apps.iter().map(|a| a.scores.quality).collect();
            let sized: Vec<&&AppResults> = apps.iter().filter(|a| a.code_lines.is_some()).collect();
            let code_lines: u64 = sized.iter().filter_map(|a| a.code_lines).sum();
            let per_kloc = |score: fn(&AppResults) -> f64| {
                (code_lines > 0).then(|| {
                    rounded(
                        sized.iter().map(|a| score(a)).sum::<f64>() / (code_lines as f64 / 1000.0),
                    )
                })
            };
            let rates: Vec<f64> = apps
                .iter()
                .filter_map(|a| a.judge.as_ref()?.get("pass_rate")?.as_f64())
                .collect();
            let perf = |k: &str| -> Vec<f64> {
                apps.iter()
                    .filter_map(|a| {
                        let o = &a.performance.as_ref()?["overall"];
                        match k {
                            "p50" => o["latency_ms"]["p50"].as_f64(),
                            _ => o["requests_per_sec"].as_f64(),
                        }
                    })
                    .collect()
            };
            security_of.insert(model.to_string(), security.clone());
            ModelStanding {
                model: model.to_string(),
                rank: 0,
                apps: apps.len(),
                did_not_run: apps.iter().filter(|a| a.did_not_run()).count(),
                coverage: Coverage {
                    full: apps.iter().filter(|a| a.coverage == "full").count(),
                    partial: apps.iter().filter(|a| a.coverage == "partial").count(),
                    none: apps.iter().filter(|a| a.coverage == "none").count(),
                },
                code_lines,
                by_severity,
                by_category,
                security_score: rounded(mean(&security)),
                security_ci: bootstrap_ci(&security),
                security_per_kloc: per_kloc(|a| a.scores.security),
                quality_score: rounded(mean(&quality)),
                quality_ci: bootstrap_ci(&quality),
                quality_per_kloc: per_kloc(|a| a.scores.quality),
                pass_rate: (!rates.is_empty()).then(|| rounded(mean(&rates))),
                p50_ms: median(perf("p50")).map(rounded),
                requests_per_sec: median(perf("rps")).map(rounded),
                by_template: apps
                    .iter()
                    .filter_map(|a| Some((a.template.clone()?, rounded(a.scores.security))))
                    .collect(),
                small_sample: apps.len() < SMALL_SAMPLE,
                versus_next: None,
                note: String::new(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.security_score
            .total_cmp(&b.security_score)
            .then_with(|| a.quality_score.total_cmp(&b.quality_score))
            .then_with(|| {
                b.pass_rate
                    .unwrap_or(0.0)
                    .total_cmp(&a.pass_rate.unwrap_or(0.0))
            })
            .then_with(|| a.model.cmp(&b.model))
    });
    for i in 0..out.len() {
        out[i].rank = i + 1;
        if let Some(next) = out.get(i + 1).map(|n| n.model.clone()) {
            let p = rounded(permutation_p_value(
                &security_of[&out[i].model],
                &security_of[&next],
            ));
            out[i].versus_next = Some(Versus {
                model: next,
                p_value: p,
                tie: p >= TIE_P_VALUE,
            });
        }
        out[i].note = out[i].make_note();
    }
    out
}

/// A figure as every view shows it, `—` when there is none.
pub fn cell(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into())
}

/// `4.20 [1.00–8.00]`, the way every view shows a score with its interval.
pub fn with_interval(score: f64, ci: Option<[f64; 2]>) -> String {
    match ci {
        Some([lo, hi]) => format!("{score:.2} [{lo:.2}–{hi:.2}]"),
        None => format!("{score:.2}"),
    }
}

/// The terminal table of `assay compare`.
pub fn render(models: &[ModelStanding]) -> String {
    if models.is_empty() {
        return "no analyzed apps with a model in this pipeline: compare needs analysis jobs whose items name a `model` (assay analyze --layout '{model}/…' does)\n".into();
    }
    let header = [
        "#",
        "model",
        "apps",
        "did not run",
        "coverage f/p/n",
        "KLOC",
        "security/app [95% CI]",
        "security/KLOC",
        "quality/app [95% CI]",
        "quality/KLOC",
        "pass rate",
        "p50 ms",
        "req/s",
    ];
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.rank.to_string(),
                m.model.clone(),
                m.apps.to_string(),
                m.did_not_run.to_string(),
                format!(
                    "{}/{}/{}",
                    m.coverage.full, m.coverage.partial, m.coverage.none
                ),
                format!("{:.2}", m.code_lines as f64 / 1000.0),
                with_interval(m.security_score, m.security_ci),
                cell(m.security_per_kloc),
                with_interval(m.quality_score, m.quality_ci),
                cell(m.quality_per_kloc),
                m.pass_rate
                    .map(|r| format!("{:.0}%", r * 100.0))
                    .unwrap_or_else(|| "—".into()),
                cell(m.p50_ms),
                cell(m.requests_per_sec),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = w - c.chars().count();
                if i == 1 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ");
        l.push('\n');
        l
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for (m, r) in models.iter().zip(rows) {
        out += &line(r);
        if !m.note.is_empty() {
            out += &format!("{}  ↳ {}\n", " ".repeat(widths[0]), m.note);
        }
    }
    out += &format!(
        "\nLower scores are better: weighted findings (critical 10, high 5, medium 2, low 1) per app and per 1,000 lines of code. \
         An app that did not run adds {DID_NOT_RUN_PENALTY} to both of its scores. \
         Intervals: 95% bootstrap; ties: permutation test against the next model, p ≥ {TIE_P_VALUE}. See docs/ranking.md.\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearly_different_samples_are_told_apart_and_equal_ones_are_a_tie() {
        let clean = [0.0, 1.0, 0.0, 2.0, 1.0, 0.0];
        let dirty = [20.0, 15.0, 25.0, 18.0, 30.0, 22.0];
        assert!(permutation_p_value(&clean, &dirty) < 0.01);
        assert_eq!(permutation_p_value(&clean, &clean), 1.0);
        // 3 against 3 can never be told apart at 5%: 2 of the 20 splits are as extreme.
        assert!((permutation_p_value(&[0.0, 0.0, 0.0], &[9.0, 9.0, 9.0]) - 0.1).abs() < 1e-9);
        // Many apps: random splits, still clearly apart, and the same figure every time.
        let many_a: Vec<f64> = (0..40).map(|i| (i % 5) as f64).collect();
        let many_b: Vec<f64> = (0..40).map(|i| 3.0 + (i % 5) as f64).collect();
        let p = permutation_p_value(&many_a, &many_b);
        assert!(p < 0.001, "{p}");
        assert_eq!(p, permutation_p_value(&many_a, &many_b));
    }

    #[test]
    fn the_interval_holds_the_mean_and_collapses_when_every_app_agrees() {
        let xs = [0.0, 5.0, 10.0, 2.0, 7.0, 1.0];
        let [lo, hi] = bootstrap_ci(&xs).unwrap();
        let m = mean(&xs);
        assert!(lo < m && m < hi, "{lo} {m} {hi}");
        assert!(lo >= 0.0 && hi <= 10.0);
        assert_eq!(bootstrap_ci(&[3.0, 3.0, 3.0]), Some([3.0, 3.0]));
        assert_eq!(bootstrap_ci(&[3.0]), None);
    }
}
