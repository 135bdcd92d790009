//! A spec as a client submits it (`POST /api/pipelines` reads and plans it on the server):
//! reading it returns a spec or a clean error, and whatever is accepted respects the limits
//! the spec module documents, both as read and as planned.
#![no_main]

use assay::spec::{self, SpecError, MAX_DEPENDENCIES, MAX_JOBS, MAX_RENDERED_BYTES, MAX_STAGES};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Planning is only tried on specs this small: a legitimate million-job plan takes seconds
/// and gigabytes, which would turn every large matrix into a reported time-out or OOM
/// rather than a finding. The limits on what may be read are checked at every size.
const PLAN_AT_MOST: usize = 5_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match spec::parse("fuzz.toml", text) {
        Ok(spec) => spec,
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("fuzz.toml"), "{message}");
            if let SpecError::Invalid { line, .. } = e {
                assert!(line >= 1 && line <= text.lines().count() + 1, "{message}");
            }
            return;
        }
    };
    check_spec(&spec);
    let jobs: usize = spec.stages.iter().map(|s| s.items.len()).sum();
    if jobs <= PLAN_AT_MOST {
        if let Ok(plan) = spec.plan() {
            check_plan(&spec, &plan, jobs);
        }
    }
});

fn check_spec(spec: &spec::Spec) {
    assert!(!spec.name.trim().is_empty());
    assert!(!spec.stages.is_empty() && spec.stages.len() <= MAX_STAGES);
    let jobs: usize = spec.stages.iter().map(|s| s.items.len()).sum();
    assert!(jobs <= MAX_JOBS, "{jobs} jobs accepted");
    let mut earlier = HashSet::new();
    for stage in &spec.stages {
        assert!(
            !stage.name.is_empty()
                && stage.name.len() <= 64
                && stage
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "stage name {:?}",
            stage.name
        );
        assert!(assay::kinds::KNOWN_KINDS.contains(&stage.kind.as_str()));
        for up in &stage.after {
            assert!(
                earlier.contains(up.as_str()),
                "`{up}` is not an earlier stage"
            );
        }
        assert!(!stage.items.is_empty());
        assert!(stage.retry.max_attempts >= 1);
        assert!(stage.concurrency.is_none_or(|c| c >= 1));
        assert!(stage.breaker.threshold >= 0);
        assert!(earlier.insert(stage.name.as_str()), "{} twice", stage.name);
    }
    if let Some(b) = spec.budget {
        assert!(b.usd.is_some() || b.tokens.is_some());
        assert!(b.usd.is_none_or(|u| u.is_finite() && u > 0.0));
        assert!(b.tokens.is_none_or(|t| t > 0));
    }
}

fn check_plan(spec: &spec::Spec, plan: &spec::Plan, jobs: usize) {
    assert_eq!(plan.jobs.len(), jobs, "one job per item");
    assert!(plan.dependencies() <= MAX_DEPENDENCIES);
    // Jobs come stage by stage, each stage's in the order of its items.
    let expected = spec
        .stages
        .iter()
        .flat_map(|s| s.items.iter().map(move |item| (s, item)));
    let mut keys = HashSet::new();
    for (i, (job, (stage, item))) in plan.jobs.iter().zip(expected).enumerate() {
        assert_eq!((&job.stage, &job.kind), (&stage.name, &stage.kind));
        assert_eq!(&job.item, item);
        assert_eq!(job.key, spec::job_key(&stage.name, item));
        assert!(keys.insert(job.key.as_str()), "job key {} twice", job.key);
        let mut seen = HashSet::new();
        for &d in &job.depends_on {
            assert!(d < i, "job {i} depends on the later job {d}");
            assert!(seen.insert(d), "job {i} depends on {d} twice");
            let upstream = &plan.jobs[d].stage;
            assert!(
                stage.after.contains(upstream),
                "job {i} waits for a job of `{upstream}`, which its stage does not run after"
            );
        }
        rendered_within_limit(&stage.params, &job.params);
    }
    let stages: HashMap<&str, &spec::StageSpec> =
        spec.stages.iter().map(|s| (s.name.as_str(), s)).collect();
    for wait in &plan.stage_waits {
        assert!(stages[wait.stage.as_str()].after.contains(&wait.upstream));
    }
}

/// Every templated string of a stage's params rendered to at most [`MAX_RENDERED_BYTES`],
/// and nothing else about the params changed shape.
fn rendered_within_limit(template: &Value, rendered: &Value) {
    match (template, rendered) {
        (Value::String(t), Value::String(r)) => {
            if t.contains("{{") || t.contains("{%") {
                assert!(
                    r.len() <= MAX_RENDERED_BYTES,
                    "rendered to {} bytes",
                    r.len()
                );
            } else {
                assert_eq!(t, r, "a plain string is not rendered");
            }
        }
        (Value::Array(t), Value::Array(r)) => {
            assert_eq!(t.len(), r.len());
            t.iter()
                .zip(r)
                .for_each(|(t, r)| rendered_within_limit(t, r));
        }
        (Value::Object(t), Value::Object(r)) => {
            assert!(t.keys().eq(r.keys()));
            t.values()
                .zip(r.values())
                .for_each(|(t, r)| rendered_within_limit(t, r));
        }
        (t, r) => assert_eq!(t, r),
    }
}
