//! A pipeline as the dashboard draws it: models × templates, a cell per app holding one
//! chip per stage (and per tool, when a stage fans out over tools), and the jobs that name
//! no model and template folded into one chip per stage. Pure: built from the narrow
//! `JobCell` rows the store returns, so its size follows the apps and stages, and a
//! 10,000-job pipeline costs the browser no more than it must draw.

use crate::domain::{JobState, StateCounts};
use crate::store::{JobCell, JobGroup};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Grid {
    /// Rows and columns, in the order their first job was created (the spec's order).
    pub models: Vec<String>,
    pub templates: Vec<String>,
    pub cells: Vec<Cell>,
    /// Jobs whose items name no model and template: one chip per stage.
    pub other: Vec<Chip>,
    /// The cells hold one chip per stage, not per tool: the grid had more than
    /// [`MAX_CHIPS`] chips, more than a page can show at a glance.
    pub folded: bool,
    /// The newest event of the pipeline when the grid was read (set by the caller): a
    /// stream started after it misses no change the grid does not show.
    pub last_event_id: i64,
}

/// Beyond this many chips, a cell's jobs of one stage share a chip.
pub const MAX_CHIPS: usize = 2_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    pub model: String,
    pub template: String,
    pub chips: Vec<Chip>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Chip {
    pub stage: String,
    /// What tells the chip's jobs apart inside their cell (the item's other values, such
    /// as the tool); for a single job outside the grid, its whole item.
    pub label: String,
    /// The state the chip is drawn in: its job's, or for several jobs the least settled
    /// one (running before retrying before … before completed), so work still to do shows.
    pub state: JobState,
    /// The chip's first job: the job itself when `count` is 1.
    pub job_id: i64,
    pub count: i64,
    /// Per state, for a chip of several jobs (a single job's is its `state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<StateCounts>,
}

/// Which state a chip of several jobs shows: the first of these any job is in.
const SHOWN_FIRST: [JobState; 8] = [
    JobState::Running,
    JobState::Retrying,
    JobState::Available,
    JobState::Waiting,
    JobState::Dead,
    JobState::Cancelled,
    JobState::Skipped,
    JobState::Completed,
];

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn model_and_template(item: &Value) -> Option<(&str, &str)> {
    Some((
        item.get("model")?.as_str()?,
        item.get("template")?.as_str()?,
    ))
}

/// The values of an item other than its model and template, space-separated.
fn label_in_cell(item: &Value) -> String {
    item.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "model" && *k != "template")
                .map(|(_, v)| text(v))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn item_label(item: &Value) -> String {
    match item.as_object() {
        Some(o) => o
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        None if item.is_null() => String::new(),
        None => text(item),
    }
}

impl Chip {
    fn new(job: &JobCell, label: String) -> Chip {
        Chip::empty(&job.stage, label, job.state, job.id)
    }

    fn empty(stage: &str, label: String, state: JobState, job_id: i64) -> Chip {
        Chip {
            stage: stage.to_string(),
            label,
            state,
            job_id,
            count: 0,
            counts: None,
        }
    }

    fn add(&mut self, state: JobState) {
        self.add_n(state, 1);
    }

    fn add_n(&mut self, state: JobState, n: i64) {
        self.count += n;
        let counts = self.counts.get_or_insert_with(StateCounts::default);
        counts.add(state, n);
        self.state = SHOWN_FIRST
            .into_iter()
            .find(|s| counts.get(*s) > 0)
            .unwrap_or(state);
    }

    fn finish(&mut self) {
        if self.count == 1 {
            self.counts = None;
        }
    }
}

/// Place every job; `stage_order` (the stages by position) orders the chips in a cell.
pub fn build(jobs: &[JobCell], stage_order: &[String]) -> Grid {
    let mut grid = place(jobs, stage_order);
    let chips = |g: &Grid| g.cells.iter().map(|c| c.chips.len()).sum::<usize>();
    let before = chips(&grid);
    if before > MAX_CHIPS {
        for cell in &mut grid.cells {
            cell.chips = fold(std::mem::take(&mut cell.chips));
        }
        grid.folded = chips(&grid) < before;
    }
    grid
}

/// One chip per stage out of a cell's chips (which are in stage order).
fn fold(chips: Vec<Chip>) -> Vec<Chip> {
    let mut out: Vec<Chip> = Vec::new();
    for chip in chips {
        let counts = chip.counts.clone().unwrap_or_else(|| {
            let mut c = StateCounts::default();
            c.add(chip.state, 1);
            c
        });
        match out.last_mut() {
            Some(last) if last.stage == chip.stage => {
                let merged = last.counts.get_or_insert_with(StateCounts::default);
                for state in SHOWN_FIRST {
                    merged.add(state, counts.get(state));
                }
                last.count += chip.count;
                last.job_id = last.job_id.min(chip.job_id);
                last.state = SHOWN_FIRST
                    .into_iter()
                    .find(|s| merged.get(*s) > 0)
                    .unwrap_or(last.state);
            }
            _ => out.push(Chip {
                label: String::new(),
                counts: Some(counts),
                ..chip
            }),
        }
    }
    for chip in &mut out {
        chip.finish();
    }
    out
}

/// The folded grid straight from the database's counts (`Store::job_groups`): what a
/// pipeline too large to place job by job is drawn from. Chips of several jobs carry no
/// label; a lone job outside the grid shows its stage only.
pub fn from_groups(groups: &[JobGroup], stage_order: &[String]) -> Grid {
    let position = |stage: &str| stage_position(stage_order, stage);
    let mut models: Vec<String> = Vec::new();
    let mut templates: Vec<String> = Vec::new();
    let mut seen_models: HashMap<&str, ()> = HashMap::new();
    let mut seen_templates: HashMap<&str, ()> = HashMap::new();
    let mut cells: Vec<Cell> = Vec::new();
    let mut cell_index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut chip_index: HashMap<(usize, &str), usize> = HashMap::new();
    let mut other: Vec<Chip> = Vec::new();
    let mut other_index: HashMap<&str, usize> = HashMap::new();
    let chip_of = |chips: &mut Vec<Chip>, at: Option<usize>, g: &JobGroup| match at {
        Some(at) => at,
        None => {
            chips.push(Chip::empty(&g.stage, String::new(), g.state, g.first_id));
            chips.len() - 1
        }
    };
    for g in groups {
        match (g.model.as_deref(), g.template.as_deref()) {
            (Some(model), Some(template)) => {
                if seen_models.insert(model, ()).is_none() {
                    models.push(model.to_string());
                }
                if seen_templates.insert(template, ()).is_none() {
                    templates.push(template.to_string());
                }
                let cell = *cell_index.entry((model, template)).or_insert_with(|| {
                    cells.push(Cell {
                        model: model.to_string(),
                        template: template.to_string(),
                        chips: Vec::new(),
                    });
                    cells.len() - 1
                });
                let known = chip_index.get(&(cell, g.stage.as_str())).copied();
                let at = chip_of(&mut cells[cell].chips, known, g);
                chip_index.insert((cell, g.stage.as_str()), at);
                let chip = &mut cells[cell].chips[at];
                chip.job_id = chip.job_id.min(g.first_id);
                chip.add_n(g.state, g.count);
            }
            _ => {
                let known = other_index.get(g.stage.as_str()).copied();
                let at = chip_of(&mut other, known, g);
                other_index.insert(g.stage.as_str(), at);
                other[at].job_id = other[at].job_id.min(g.first_id);
                other[at].add_n(g.state, g.count);
            }
        }
    }
    for cell in &mut cells {
        cell.chips.sort_by_key(|c| position(&c.stage));
        cell.chips.iter_mut().for_each(Chip::finish);
    }
    other.sort_by_key(|c| position(&c.stage));
    other.iter_mut().for_each(Chip::finish);
    let folded = cells.iter().any(|c| c.chips.iter().any(|ch| ch.count > 1));
    Grid {
        folded,
        models,
        templates,
        cells,
        other,
        last_event_id: 0,
    }
}

/// Where a stage stands in the pipeline; unknown stages last.
fn stage_position(stage_order: &[String], stage: &str) -> usize {
    stage_order
        .iter()
        .position(|s| s == stage)
        .unwrap_or(usize::MAX)
}

fn place(jobs: &[JobCell], stage_order: &[String]) -> Grid {
    let position = |stage: &str| stage_position(stage_order, stage);
    let mut models: Vec<String> = Vec::new();
    let mut templates: Vec<String> = Vec::new();
    let mut cells: Vec<Cell> = Vec::new();
    let mut cell_index: HashMap<(String, String), usize> = HashMap::new();
    // (cell, stage, label) -> chip index in that cell
    let mut chip_index: HashMap<(usize, String, String), usize> = HashMap::new();
    let mut other: Vec<Chip> = Vec::new();
    let mut other_index: HashMap<String, usize> = HashMap::new();

    for job in jobs {
        match model_and_template(&job.item) {
            Some((model, template)) => {
                let key = (model.to_string(), template.to_string());
                let cell = *cell_index.entry(key).or_insert_with(|| {
                    if !models.iter().any(|m| m == model) {
                        models.push(model.to_string());
                    }
                    if !templates.iter().any(|t| t == template) {
                        templates.push(template.to_string());
                    }
                    cells.push(Cell {
                        model: model.to_string(),
                        template: template.to_string(),
                        chips: Vec::new(),
                    });
                    cells.len() - 1
                });
                let label = label_in_cell(&job.item);
                let chips = &mut cells[cell].chips;
                let at = *chip_index
                    .entry((cell, job.stage.clone(), label.clone()))
                    .or_insert_with(|| {
                        chips.push(Chip::new(job, label));
                        chips.len() - 1
                    });
                chips[at].add(job.state);
            }
            None => {
                let at = *other_index.entry(job.stage.clone()).or_insert_with(|| {
                    other.push(Chip::new(job, item_label(&job.item)));
                    other.len() - 1
                });
                other[at].add(job.state);
            }
        }
    }
    for cell in &mut cells {
        cell.chips.sort_by_key(|c| position(&c.stage));
        cell.chips.iter_mut().for_each(Chip::finish);
    }
    for chip in &mut other {
        if chip.count > 1 {
            chip.label = String::new();
        }
        chip.finish();
    }
    other.sort_by_key(|c| position(&c.stage));
    Grid {
        models,
        templates,
        cells,
        other,
        folded: false,
        last_event_id: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(id: i64, stage: &str, state: JobState, item: Value) -> JobCell {
        JobCell {
            id,
            stage: stage.into(),
            state,
            item,
        }
    }

    #[test]
    fn places_apps_in_cells_with_a_chip_per_stage_and_tool() {
        let stages = vec!["generate".to_string(), "static".to_string()];
        let jobs = vec![
            job(
                1,
                "generate",
                JobState::Completed,
                json!({"model": "m1", "template": "todo"}),
            ),
            job(
                2,
                "generate",
                JobState::Running,
                json!({"model": "m2", "template": "todo"}),
            ),
            job(
                3,
                "static",
                JobState::Completed,
                json!({"model": "m1", "template": "todo", "tool": "ruff"}),
            ),
            job(
                4,
                "static",
                JobState::Dead,
                json!({"model": "m1", "template": "todo", "tool": "bandit"}),
            ),
            job(
                5,
                "generate",
                JobState::Waiting,
                json!({"model": "m1", "template": "blog"}),
            ),
        ];
        let g = build(&jobs, &stages);
        assert_eq!(g.models, vec!["m1", "m2"]);
        assert_eq!(g.templates, vec!["todo", "blog"]);
        assert_eq!(g.cells.len(), 3);
        let cell = &g.cells[0];
        assert_eq!(
            (cell.model.as_str(), cell.template.as_str()),
            ("m1", "todo")
        );
        let chips: Vec<(&str, &str, JobState, i64)> = cell
            .chips
            .iter()
            .map(|c| (c.stage.as_str(), c.label.as_str(), c.state, c.job_id))
            .collect();
        assert_eq!(
            chips,
            vec![
                ("generate", "", JobState::Completed, 1),
                ("static", "ruff", JobState::Completed, 3),
                ("static", "bandit", JobState::Dead, 4),
            ]
        );
        assert!(g.other.is_empty());
    }

    #[test]
    fn other_jobs_fold_into_one_chip_per_stage_showing_the_least_settled_state() {
        let stages = vec!["a".to_string(), "b".to_string()];
        let mut jobs: Vec<JobCell> = (1..=10_000)
            .map(|i| job(i, "b", JobState::Completed, json!({"n": i})))
            .collect();
        jobs[7].state = JobState::Dead;
        jobs.push(job(10_001, "a", JobState::Running, json!({"n": 0})));
        let g = build(&jobs, &stages);
        assert_eq!(g.other.len(), 2);
        let a = &g.other[0];
        assert_eq!(
            (a.stage.as_str(), a.count, a.state),
            ("a", 1, JobState::Running)
        );
        assert_eq!(a.label, "n=0", "a lone job keeps its item as label");
        assert_eq!(a.counts, None, "a lone job's state says it all");
        let b = &g.other[1];
        let counts = b.counts.as_ref().unwrap();
        assert_eq!((b.count, counts.completed, counts.dead), (10_000, 9_999, 1));
        assert_eq!(
            b.state,
            JobState::Dead,
            "one dead job among completed shows"
        );
        assert_eq!(b.label, "");
        assert_eq!(b.job_id, 1);
    }

    #[test]
    fn a_grid_too_big_to_read_folds_tools_into_one_chip_per_stage() {
        let stages = vec!["gen".to_string(), "static".to_string()];
        let mut jobs = Vec::new();
        let mut id = 0;
        for m in 0..10 {
            for t in 0..30 {
                id += 1;
                jobs.push(job(
                    id,
                    "gen",
                    JobState::Completed,
                    json!({"model": format!("m{m}"), "template": format!("t{t}")}),
                ));
                for tool in 0..10 {
                    id += 1;
                    let state = if tool == 3 {
                        JobState::Running
                    } else {
                        JobState::Completed
                    };
                    jobs.push(job(id, "static", state, json!({"model": format!("m{m}"), "template": format!("t{t}"), "tool": format!("x{tool}")})));
                }
            }
        }
        let g = build(&jobs, &stages);
        assert!(g.folded, "3,300 chips are more than a glance");
        assert_eq!(g.cells.len(), 300);
        let cell = &g.cells[0];
        assert_eq!(cell.chips.len(), 2);
        let st = &cell.chips[1];
        assert_eq!(
            (st.stage.as_str(), st.label.as_str(), st.count, st.state),
            ("static", "", 10, JobState::Running)
        );
        assert_eq!(st.counts.as_ref().unwrap().completed, 9);

        // The database's counts draw the same folded grid.
        let mut counted: Vec<JobGroup> = Vec::new();
        for j in &jobs {
            let (m, t) = model_and_template(&j.item).unwrap();
            match counted.iter_mut().find(|g| {
                g.stage == j.stage
                    && g.model.as_deref() == Some(m)
                    && g.template.as_deref() == Some(t)
                    && g.state == j.state
            }) {
                Some(g) => g.count += 1,
                None => counted.push(JobGroup {
                    stage: j.stage.clone(),
                    model: Some(m.into()),
                    template: Some(t.into()),
                    state: j.state,
                    count: 1,
                    first_id: j.id,
                }),
            }
        }
        assert_eq!(from_groups(&counted, &stages), g);

        let small = build(&jobs[..11], &stages);
        assert!(!small.folded);
        assert_eq!(small.cells[0].chips.len(), 11);
    }

    #[test]
    fn pending_work_shows_before_finished_work() {
        let stages = vec!["s".to_string()];
        let item = json!({"model": "m", "template": "t", "tool": "x"});
        let jobs = vec![
            job(1, "s", JobState::Dead, item.clone()),
            job(2, "s", JobState::Waiting, item.clone()),
            job(3, "s", JobState::Completed, item),
        ];
        let chip = &build(&jobs, &stages).cells[0].chips[0];
        assert_eq!((chip.count, chip.state), (3, JobState::Waiting));
    }
}
