//! Gathering a pipeline's exports from a store: its analysis jobs folded into per-app
//! results, the model ranking and the LLM usage. The server serves them as downloads and
//! `assay export --data-dir` writes them without a server; `crate::report` renders them.

use crate::report::{ExportError, ExportFormat, ReportInput};
use crate::results::{AppResults, ModelStanding};
use crate::store::{Job, JobFilter, Pipeline, PipelineUsage, Store, StoreResult};

/// Everything an export of one pipeline shows.
pub struct Gathered {
    pub pipeline: Pipeline,
    pub apps: Vec<AppResults>,
    pub models: Vec<ModelStanding>,
    pub usage: PipelineUsage,
}

impl Gathered {
    pub fn export(&self, format: ExportFormat, now: i64) -> Result<Vec<u8>, ExportError> {
        crate::report::export(
            format,
            &ReportInput {
                pipeline: &self.pipeline,
                apps: &self.apps,
                models: &self.models,
                usage: &self.usage,
                generated_at: now,
            },
        )
    }
}

/// The pipeline's jobs of the analysis kinds, in id order, read a page at a time.
pub async fn analysis_jobs(store: &dyn Store, pipeline_id: i64) -> StoreResult<Vec<Job>> {
    const PAGE: i64 = 5_000;
    let mut jobs = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .jobs(&JobFilter {
                pipeline_id: Some(pipeline_id),
                after_id: Some(after),
                limit: Some(PAGE),
                ..Default::default()
            })
            .await?;
        let done = (page.len() as i64) < PAGE;
        after = page.last().map(|j| j.id).unwrap_or(after);
        jobs.extend(
            page.into_iter()
                .filter(|j| crate::results::ANALYSIS_KINDS.contains(&j.kind.as_str())),
        );
        if done {
            return Ok(jobs);
        }
    }
}

/// `None` when there is no such pipeline.
pub async fn gather(store: &dyn Store, pipeline_id: i64) -> StoreResult<Option<Gathered>> {
    let Some(pipeline) = store.pipeline(pipeline_id).await? else {
        return Ok(None);
    };
    let apps = crate::results::build(&analysis_jobs(store, pipeline_id).await?);
    let models = crate::results::compare(&apps);
    let usage = store.pipeline_usage(pipeline_id).await?;
    Ok(Some(Gathered {
        pipeline,
        apps,
        models,
        usage,
    }))
}
