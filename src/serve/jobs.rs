//! Whole-model jobs: a queue of quantization runs, at most `--max-jobs` at a time.
//!
//! A job is checked when it is submitted — its model and output through the server's root, its
//! configuration as a YAML file's keys (the server's own `ARROW_QUANT_*` environment does not
//! apply: a job is configured by its client alone) — then waits its turn and runs the pipeline
//! `arrowquant quantize` runs, ending done, failed or cancelled. Cancelling a running job drops
//! its pipeline future, and with it the partial-output guards that remove what it wrote; the
//! call returns once that has happened. The last [`MAX_FINISHED`] finished jobs are kept for
//! clients to read, older ones forgotten, so the server's memory does not grow with its age.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use datafusion::common::{DataFusionError, Result};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

use super::metrics::Metrics;
use crate::cli::error_line;
use crate::config::{QuantConfig, Settings, Value as Setting};
use crate::pipeline::gguf_output::is_gguf_path;
use crate::pipeline::{self, Progress, RunOptions, RunSummary};
use crate::root::Root;

/// Finished jobs kept for clients to read.
pub const MAX_FINISHED: usize = 1000;
/// Jobs that may wait at once; a submission beyond is refused until some have started.
pub const MAX_QUEUED: usize = 1000;
/// How long stopping waits for running jobs to drop their work before the process removes
/// their partial outputs itself and exits (work blocked in a system call answers late).
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A job as a client asks for it: paths as it names them, and the configuration object.
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    pub model: String,
    pub output: String,
    pub config: Map<String, Value>,
}

/// Why a request about jobs was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A path outside the server's root.
    #[error("{0}")]
    Outside(String),
    /// A path inside the root that cannot be used (no model there, no directory to write in).
    #[error("{0}")]
    BadPath(String),
    /// A configuration key or value, or a combination, the pipeline refuses.
    #[error("{0}")]
    BadConfig(String),
    /// The output exists, or another job is writing it.
    #[error("{0}")]
    OutputTaken(String),
    #[error("no job with id '{0}'")]
    NotFound(String),
    #[error("job {id} is {state}: only queued and running jobs can be cancelled")]
    Finished { id: String, state: JobState },
    #[error("the server is shutting down: it takes no new jobs")]
    ShuttingDown,
    #[error("{MAX_QUEUED} jobs are queued already: submit again once some have started")]
    QueueFull,
}

/// Progress of the pass a running job is in.
#[derive(Debug)]
pub struct Meter {
    phase: String,
    /// Passes started: two passes may share a name ("redoing 3 tensors").
    step: u64,
    total: u64,
    done: u64,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            phase: "starting".into(),
            step: 0,
            total: 0,
            done: 0,
        }
    }
}

impl Meter {
    pub fn record(&mut self, progress: Progress) {
        match progress {
            Progress::Start { phase, bytes } => {
                self.phase = phase;
                self.step += 1;
                self.total = bytes;
                self.done = 0;
            }
            Progress::Advance { bytes } => self.done = self.done.saturating_add(bytes),
        }
    }

    /// Bytes done over the bytes of the current pass, at most 1: it only grows within a pass.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        (self.done as f64 / self.total as f64).min(1.0)
    }
}

/// The work of one job, given its options and where to report progress.
pub type Work = Pin<Box<dyn Future<Output = Result<RunSummary>> + Send>>;
type Runner = dyn Fn(RunOptions, Arc<Mutex<Meter>>) -> Work + Send + Sync;

/// The runner of a server: the pipeline of `arrowquant quantize`.
fn pipeline_runner(options: RunOptions, meter: Arc<Mutex<Meter>>) -> Work {
    Box::pin(async move {
        let report = move |p: Progress| lock(&meter).record(p);
        pipeline::quantize(&options, &report).await
    })
}

struct Job {
    id: u64,
    /// The paths as the client named them (what it is shown back).
    model: String,
    output: String,
    options: RunOptions,
    state: JobState,
    meter: Arc<Mutex<Meter>>,
    started: Option<Instant>,
    /// Seconds it ran, once it has ended.
    seconds: Option<f64>,
    summary: Option<Value>,
    report: Option<Value>,
    error: Option<String>,
    /// Taken and fired to cancel the running job.
    cancel: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    jobs: BTreeMap<u64, Job>,
    queue: VecDeque<u64>,
    running: usize,
    /// Finished jobs, oldest first: the ones forgotten when the history is full.
    finished: VecDeque<u64>,
    shutting_down: bool,
}

/// How a job ended.
enum Outcome {
    Done {
        summary: Box<RunSummary>,
        json: Value,
        report: std::result::Result<Value, String>,
    },
    Failed(String),
    Cancelled,
}

/// How long `DELETE /v1/jobs/{id}` waits for a running job to stop before it answers with the
/// job still running (its cancellation requested).
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The server's jobs.
pub struct Jobs {
    pub max_running: usize,
    pub metrics: Arc<Metrics>,
    pub root: Arc<Root>,
    /// Finished jobs kept ([`MAX_FINISHED`]; fewer in tests).
    history: usize,
    inner: Mutex<Inner>,
    /// Counts the jobs that ended: whoever waits for one watches it.
    ended: watch::Sender<u64>,
    runner: Box<Runner>,
    /// This, for the tasks that run jobs.
    me: Weak<Jobs>,
}

/// A lock that survives a panic of another holder: the state it guards is updated in single
/// assignments, never left half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Jobs {
    pub fn new(max_running: usize, metrics: Arc<Metrics>, root: Arc<Root>) -> Arc<Jobs> {
        // Every final state's series exists from the start, at zero, so a scrape sees them.
        for state in [JobState::Done, JobState::Failed, JobState::Cancelled] {
            metrics.job_seconds.with_label_values(&[state.name()]);
        }
        Jobs::with_runner(
            max_running,
            metrics,
            root,
            MAX_FINISHED,
            Box::new(pipeline_runner),
        )
    }

    fn with_runner(
        max_running: usize,
        metrics: Arc<Metrics>,
        root: Arc<Root>,
        history: usize,
        runner: Box<Runner>,
    ) -> Arc<Jobs> {
        Arc::new_cyclic(|me| Jobs {
            max_running: max_running.max(1),
            metrics,
            root,
            history,
            inner: Mutex::new(Inner::default()),
            ended: watch::Sender::new(0),
            runner,
            me: me.clone(),
        })
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        lock(&self.inner).shutting_down
    }

    /// Checks `request` and queues it; its id.
    pub fn submit(&self, request: JobRequest) -> std::result::Result<String, JobError> {
        if self.is_shutting_down() {
            return Err(JobError::ShuttingDown);
        }
        let options = self.prepare(&request)?;
        let mut inner = lock(&self.inner);
        if inner.shutting_down {
            return Err(JobError::ShuttingDown);
        }
        if inner.queue.len() >= MAX_QUEUED {
            return Err(JobError::QueueFull);
        }
        if let Some(other) = inner
            .jobs
            .values()
            .find(|j| !j.state.is_final() && j.options.output == options.output)
        {
            return Err(JobError::OutputTaken(format!(
                "output '{}': job {} ({}) is writing it",
                request.output, other.id, other.state
            )));
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.jobs.insert(
            id,
            Job {
                id,
                model: request.model,
                output: request.output,
                options,
                state: JobState::Queued,
                meter: Arc::default(),
                started: None,
                seconds: None,
                summary: None,
                report: None,
                error: None,
                cancel: None,
            },
        );
        inner.queue.push_back(id);
        self.start_queued(&mut inner);
        Ok(id.to_string())
    }

    /// The run `request` asks for, every path resolved through the root and the configuration
    /// checked as the pipeline will take it.
    fn prepare(&self, request: &JobRequest) -> std::result::Result<RunOptions, JobError> {
        let outside = |e: DataFusionError| JobError::Outside(error_line(&e));
        let model = self
            .root
            .resolve("model", &request.model)
            .map_err(outside)?;
        if !model.exists() {
            return Err(JobError::BadPath(format!(
                "model '{}': no such file or directory under the server's root {}",
                request.model,
                self.root.dir().display()
            )));
        }
        let output = self
            .root
            .resolve("output", &request.output)
            .map_err(outside)?;
        // A dangling link is something there too.
        if output.symlink_metadata().is_ok() {
            return Err(JobError::OutputTaken(format!(
                "output '{}' exists; a server job never replaces an output: name a new one",
                request.output
            )));
        }
        if !output.parent().is_some_and(|p| p.is_dir()) {
            return Err(JobError::BadPath(format!(
                "output '{}': the directory to write it in does not exist",
                request.output
            )));
        }

        let bad = |e: crate::config::ConfigError| JobError::BadConfig(e.to_string());
        let mut settings = Settings::from_json("config", &request.config).map_err(bad)?;
        if !request.config.contains_key("format") && (is_gguf_path(&model) || is_gguf_path(&output))
        {
            // As on the command line: a .gguf output is a GGUF file, and a GGUF model is
            // written back as GGUF.
            settings
                .values
                .insert(0, ("format".into(), Setting::Text("gguf".into())));
        }
        let mut config =
            QuantConfig::resolve(&Settings::new("environment"), None, &settings).map_err(bad)?;
        confine_config_paths(&self.root, &mut config).map_err(outside)?;
        pipeline::check_run(&model, &config)
            .map_err(|e| JobError::BadConfig(format!("config: {}", error_line(&e))))?;
        Ok(RunOptions {
            model,
            output,
            config,
            force: false,
        })
    }

    /// A job as clients see it, with its summary, report and error.
    pub fn get(&self, id: &str) -> std::result::Result<Value, JobError> {
        let inner = lock(&self.inner);
        find(&inner, id).map(|job| view(job, true))
    }

    /// Every job known, oldest first, without summaries and reports.
    pub fn list(&self) -> Vec<Value> {
        lock(&self.inner)
            .jobs
            .values()
            .map(|job| view(job, false))
            .collect()
    }

    /// Cancels job `id`: a queued one leaves the queue, a running one's work is dropped (its
    /// partial output removed) before this returns. A job that has ended is refused.
    pub async fn cancel(&self, id: &str) -> std::result::Result<Value, JobError> {
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        let mut ended = self.ended.subscribe();
        let key = {
            let mut inner = lock(&self.inner);
            let job = find_mut(&mut inner, id)?;
            let key = job.id;
            match job.state {
                JobState::Queued => {
                    inner.queue.retain(|queued| *queued != key);
                    self.settle(&mut inner, key, Outcome::Cancelled);
                    let answer = inner.jobs.get(&key).map(|job| view(job, true));
                    drop(inner);
                    self.ended.send_modify(|n| *n += 1);
                    return answer.ok_or_else(|| JobError::NotFound(id.to_string()));
                }
                JobState::Running => {
                    if let Some(cancel) = job.cancel.take() {
                        let _ = cancel.send(());
                    }
                }
                state => {
                    return Err(JobError::Finished {
                        id: id.to_string(),
                        state,
                    });
                }
            }
            key
        };
        loop {
            {
                let inner = lock(&self.inner);
                match inner.jobs.get(&key) {
                    None => return Err(JobError::NotFound(id.to_string())),
                    Some(job) if job.state == JobState::Cancelled => return Ok(view(job, true)),
                    // It ended on its own before the cancellation reached it.
                    Some(job) if job.state.is_final() => {
                        return Err(JobError::Finished {
                            id: id.to_string(),
                            state: job.state,
                        });
                    }
                    Some(_) => {}
                }
            }
            match tokio::time::timeout_at(deadline, ended.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(JobError::NotFound(id.to_string())),
                // Stuck in blocking code: the client hears that it is still stopping (the state
                // turns to cancelled when it does) instead of waiting without end.
                Err(_) => {
                    let inner = lock(&self.inner);
                    return match inner.jobs.get(&key) {
                        Some(job) => Ok(view(job, true)),
                        None => Err(JobError::NotFound(id.to_string())),
                    };
                }
            }
        }
    }

    /// Cancels every job, queued or running; returns once their partial outputs are removed.
    /// New submissions are refused from the start.
    pub async fn shutdown(&self) {
        let mut ended = self.ended.subscribe();
        {
            let mut inner = lock(&self.inner);
            inner.shutting_down = true;
            let queued: Vec<u64> = inner.queue.drain(..).collect();
            for id in queued {
                self.settle(&mut inner, id, Outcome::Cancelled);
            }
            for job in inner.jobs.values_mut() {
                if let Some(cancel) = job.cancel.take() {
                    let _ = cancel.send(());
                }
            }
            self.gauges(&inner);
        }
        self.ended.send_modify(|n| *n += 1);
        let drained = async {
            while lock(&self.inner).running > 0 {
                if ended.changed().await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(STOP_GRACE, drained).await.is_err() {
            eprintln!(
                "arrowquant serve: jobs still running {} s after the stop: removing their \
                 partial outputs and exiting",
                STOP_GRACE.as_secs()
            );
            pipeline::output::exit_removing_partials(1);
        }
    }

    /// Starts queued jobs while there are free slots (none once stopping has begun).
    fn start_queued(&self, inner: &mut Inner) {
        // Jobs run on the compute runtime, so the listeners answer while they quantize.
        let runtime = super::compute::handle();
        while !inner.shutting_down && inner.running < self.max_running {
            let Some(id) = inner.queue.pop_front() else {
                break;
            };
            let (Some(me), Some(job)) = (self.me.upgrade(), inner.jobs.get_mut(&id)) else {
                continue;
            };
            let (cancel, cancelled) = oneshot::channel();
            job.state = JobState::Running;
            job.started = Some(Instant::now());
            job.cancel = Some(cancel);
            let work = (self.runner)(job.options.clone(), job.meter.clone());
            inner.running += 1;
            runtime.spawn(me.run(id, work, cancelled));
        }
        self.gauges(inner);
    }

    /// Runs one job's work until it ends or is cancelled, and records how it ended.
    async fn run(self: Arc<Self>, id: u64, work: Work, cancelled: oneshot::Receiver<()>) {
        let mut ending = Ending {
            jobs: self.clone(),
            id,
            armed: true,
        };
        // `select!` drops both futures before it returns: a cancelled run's partial output is
        // gone by the time the job says cancelled.
        let result = tokio::select! {
            biased;
            _ = cancelled => None,
            result = work => Some(result),
        };
        let outcome = match result {
            None => Outcome::Cancelled,
            Some(Err(e)) => Outcome::Failed(error_line(&e)),
            Some(Ok(summary)) => {
                // Made outside the lock: a large model's report is thousands of rows.
                let json = serde_json::to_value(&summary).unwrap_or(Value::Null);
                let report = pipeline::report_rows(&summary.report).map_err(|e| error_line(&e));
                Outcome::Done {
                    summary: Box::new(summary),
                    json,
                    report,
                }
            }
        };
        ending.armed = false;
        self.end(id, outcome);
    }

    /// Records that running job `id` ended, and starts the next.
    fn end(&self, id: u64, outcome: Outcome) {
        let mut inner = lock(&self.inner);
        inner.running = inner.running.saturating_sub(1);
        self.settle(&mut inner, id, outcome);
        self.start_queued(&mut inner);
        drop(inner);
        self.ended.send_modify(|n| *n += 1);
    }

    /// Puts job `id` into its final state, counts it, and forgets the oldest finished jobs
    /// beyond the history.
    fn settle(&self, inner: &mut Inner, id: u64, outcome: Outcome) {
        let Some(job) = inner.jobs.get_mut(&id) else {
            return;
        };
        let m = &self.metrics;
        job.cancel = None;
        job.state = match outcome {
            Outcome::Done {
                summary,
                json,
                report,
            } => {
                m.job_bytes_in.inc_by(summary.bytes_before);
                m.job_bytes_out.inc_by(summary.bytes_after);
                if summary.compression_ratio.is_finite() {
                    m.job_compression_ratio.observe(summary.compression_ratio);
                }
                if summary.mean_cosine.is_finite() {
                    m.job_mean_cosine.observe(summary.mean_cosine);
                }
                job.summary = Some(json);
                match report {
                    Ok(rows) => job.report = Some(rows),
                    Err(e) => job.error = Some(format!("the report could not be read: {e}")),
                }
                JobState::Done
            }
            Outcome::Failed(error) => {
                m.error("job");
                job.error = Some(error);
                JobState::Failed
            }
            Outcome::Cancelled => JobState::Cancelled,
        };
        // Only time spent running counts: a job cancelled in the queue never ran.
        if let Some(started) = job.started {
            let seconds = started.elapsed().as_secs_f64();
            job.seconds = Some(seconds);
            m.job_seconds
                .with_label_values(&[job.state.name()])
                .observe(seconds);
        }
        m.jobs_finished.with_label_values(&[job.state.name()]).inc();
        inner.finished.push_back(id);
        while inner.finished.len() > self.history {
            if let Some(old) = inner.finished.pop_front() {
                inner.jobs.remove(&old);
            }
        }
        self.gauges(inner);
    }

    fn gauges(&self, inner: &Inner) {
        self.metrics.jobs_queued.set(inner.queue.len() as i64);
        self.metrics.jobs_running.set(inner.running as i64);
    }
}

/// Records a running job as cancelled if its task is dropped before it ends (the runtime
/// stopping): its slot is freed and whoever waits for it is told.
struct Ending {
    jobs: Arc<Jobs>,
    id: u64,
    armed: bool,
}

impl Drop for Ending {
    fn drop(&mut self) {
        if self.armed {
            self.jobs.end(self.id, Outcome::Cancelled);
        }
    }
}

/// The configuration's own paths (a calibration set, an importance matrix) go through the root
/// like the model's.
fn confine_config_paths(root: &Root, config: &mut QuantConfig) -> Result<()> {
    for (key, path) in [
        ("calibration", &mut config.calibration),
        ("imatrix", &mut config.imatrix),
    ] {
        if let Some(path) = path {
            *path = root.resolve(key, path)?.display().to_string();
        }
    }
    Ok(())
}

fn find<'a>(inner: &'a Inner, id: &str) -> std::result::Result<&'a Job, JobError> {
    id.parse::<u64>()
        .ok()
        .and_then(|key| inner.jobs.get(&key))
        .ok_or_else(|| JobError::NotFound(id.to_string()))
}

fn find_mut<'a>(inner: &'a mut Inner, id: &str) -> std::result::Result<&'a mut Job, JobError> {
    id.parse::<u64>()
        .ok()
        .and_then(|key| inner.jobs.get_mut(&key))
        .ok_or_else(|| JobError::NotFound(id.to_string()))
}

/// A job as JSON: id, state, paths and progress; `full` adds the configuration, run time,
/// summary, report and error.
fn view(job: &Job, full: bool) -> Value {
    let (fraction, phase, step) = {
        let meter = lock(&job.meter);
        match job.state {
            // Also a job cancelled before it started.
            _ if job.started.is_none() => (0.0, "queued".to_string(), 0),
            JobState::Done => (1.0, "done".to_string(), meter.step),
            _ => (meter.fraction(), meter.phase.clone(), meter.step),
        }
    };
    let mut value = json!({
        "id": job.id.to_string(),
        "state": job.state,
        "model": job.model,
        "output": job.output,
        "progress": {"fraction": fraction, "phase": phase, "step": step},
    });
    if full {
        let seconds = job
            .seconds
            .or_else(|| job.started.map(|t| t.elapsed().as_secs_f64()));
        value["config"] = serde_json::to_value(&job.options.config).unwrap_or(Value::Null);
        value["seconds"] = json!(seconds);
        value["summary"] = job.summary.clone().unwrap_or(Value::Null);
        value["report"] = job.report.clone().unwrap_or(Value::Null);
        value["error"] = json!(job.error);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("arrowquant-jobs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("model")).unwrap();
        std::fs::write(dir.join("model/model.safetensors"), b"not read here").unwrap();
        Scratch(dir)
    }

    /// Jobs whose work waits until cancelled, or fails at once when its output's name says so.
    fn jobs(dir: &std::path::Path, max_running: usize, history: usize) -> Arc<Jobs> {
        let runner = |options: RunOptions, meter: Arc<Mutex<Meter>>| -> Work {
            Box::pin(async move {
                lock(&meter).record(Progress::Start {
                    phase: "waiting".into(),
                    bytes: 4,
                });
                lock(&meter).record(Progress::Advance { bytes: 1 });
                if options.output.to_string_lossy().ends_with("fails") {
                    return Err(DataFusionError::Execution("it failed".into()));
                }
                std::future::pending().await
            })
        };
        Jobs::with_runner(
            max_running,
            Arc::new(Metrics::new()),
            Arc::new(Root::new(dir).unwrap()),
            history,
            Box::new(runner),
        )
    }

    fn request(output: &str) -> JobRequest {
        JobRequest {
            model: "model".into(),
            output: output.into(),
            config: Map::new(),
        }
    }

    fn state(jobs: &Jobs, id: &str) -> String {
        jobs.get(id).unwrap()["state"].as_str().unwrap().to_string()
    }

    async fn until(jobs: &Jobs, id: &str, wanted: &str) {
        for _ in 0..500 {
            if state(jobs, id) == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("job {id} never became {wanted}: {}", jobs.get(id).unwrap());
    }

    #[test]
    fn the_fraction_grows_within_a_pass_and_restarts_with_the_next() {
        let mut m = Meter::default();
        assert_eq!((m.fraction(), m.phase.as_str()), (0.0, "starting"));
        m.record(Progress::Start {
            phase: "quantizing".into(),
            bytes: 200,
        });
        let mut last = 0.0;
        for _ in 0..5 {
            m.record(Progress::Advance { bytes: 50 });
            assert!(m.fraction() >= last);
            last = m.fraction();
        }
        assert_eq!(last, 1.0, "more bytes than announced stay at 1");
        m.record(Progress::Start {
            phase: "redoing 2 tensors".into(),
            bytes: 10,
        });
        m.record(Progress::Advance { bytes: 5 });
        assert_eq!((m.fraction(), m.phase.as_str()), (0.5, "redoing 2 tensors"));
        assert_eq!(m.step, 2);
        m.record(Progress::Start {
            phase: "empty".into(),
            bytes: 0,
        });
        assert_eq!(m.fraction(), 0.0);
    }

    #[tokio::test]
    async fn jobs_queue_in_order_run_at_most_max_and_end_as_told() {
        let s = scratch("queue");
        let jobs = jobs(&s.0, 1, MAX_FINISHED);
        let a = jobs.submit(request("a")).unwrap();
        let b = jobs.submit(request("b")).unwrap();
        let c = jobs.submit(request("c")).unwrap();
        until(&jobs, &a, "running").await;
        // Running from its start; its work reports once the task is first polled.
        while jobs.get(&a).unwrap()["progress"]["step"] == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            (state(&jobs, &b), state(&jobs, &c)),
            ("queued".into(), "queued".into())
        );
        assert_eq!(
            (
                jobs.metrics.jobs_running.get(),
                jobs.metrics.jobs_queued.get()
            ),
            (1, 2)
        );
        let progress = &jobs.get(&a).unwrap()["progress"];
        assert_eq!(progress["fraction"], 0.25);
        assert_eq!(progress["phase"], "waiting");

        // The same output twice while the first is pending: refused.
        let e = jobs.submit(request("b")).unwrap_err();
        assert!(matches!(e, JobError::OutputTaken(_)), "{e}");

        // A queued job leaves the queue; the running one's work is dropped, and b starts.
        let cancelled = jobs.cancel(&c).await.unwrap();
        assert_eq!(cancelled["state"], "cancelled");
        assert_eq!(jobs.metrics.jobs_queued.get(), 1);
        assert_eq!(jobs.cancel(&a).await.unwrap()["state"], "cancelled");
        until(&jobs, &b, "running").await;
        let e = jobs.cancel(&a).await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!("job {a} is cancelled: only queued and running jobs can be cancelled")
        );
        assert_eq!(
            jobs.cancel("nope").await.unwrap_err().to_string(),
            "no job with id 'nope'"
        );

        let f = jobs.submit(request("fails")).unwrap();
        jobs.cancel(&b).await.unwrap();
        until(&jobs, &f, "failed").await;
        assert_eq!(jobs.get(&f).unwrap()["error"], "it failed");
        let m = &jobs.metrics;
        assert_eq!(m.jobs_finished.with_label_values(&["cancelled"]).get(), 3);
        assert_eq!(m.jobs_finished.with_label_values(&["failed"]).get(), 1);
        assert_eq!(m.errors.with_label_values(&["job"]).get(), 1);
        // A job cancelled in the queue never ran: only a and b are timed.
        assert_eq!(
            m.job_seconds
                .with_label_values(&["cancelled"])
                .get_sample_count(),
            2
        );
        assert_eq!((m.jobs_running.get(), m.jobs_queued.get()), (0, 0));
        let listed: Vec<String> = jobs
            .list()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed, [a, b, c, f]);
    }

    #[tokio::test]
    async fn the_history_is_bounded() {
        let s = scratch("history");
        // One at a time, so they finish in order on the multi-threaded compute runtime.
        let jobs = jobs(&s.0, 1, 3);
        let ids: Vec<String> = (0..6)
            .map(|i| jobs.submit(request(&format!("{i}-fails"))).unwrap())
            .collect();
        until(&jobs, &ids[5], "failed").await;
        let kept: Vec<Value> = jobs.list().iter().map(|j| j["id"].clone()).collect();
        assert_eq!(kept, [json!(ids[3]), json!(ids[4]), json!(ids[5])]);
        assert!(matches!(jobs.get(&ids[0]), Err(JobError::NotFound(_))));
    }

    #[tokio::test]
    async fn shutdown_cancels_everything_and_refuses_new_jobs() {
        let s = scratch("shutdown");
        let jobs = jobs(&s.0, 1, MAX_FINISHED);
        let a = jobs.submit(request("a")).unwrap();
        let b = jobs.submit(request("b")).unwrap();
        until(&jobs, &a, "running").await;
        jobs.shutdown().await;
        assert_eq!(
            (state(&jobs, &a), state(&jobs, &b)),
            ("cancelled".into(), "cancelled".into())
        );
        assert!(jobs.is_shutting_down());
        assert!(matches!(
            jobs.submit(request("c")),
            Err(JobError::ShuttingDown)
        ));
    }

    #[tokio::test]
    async fn requests_are_checked_before_they_are_queued() {
        let s = scratch("refusals");
        std::fs::create_dir_all(s.0.join("taken")).unwrap();
        let jobs = jobs(&s.0, 1, MAX_FINISHED);
        let with = |model: &str, output: &str, config: &str| JobRequest {
            model: model.into(),
            output: output.into(),
            config: serde_json::from_str(config).unwrap(),
        };
        for (request, message) in [
            (with("../x", "out", "{}"), "model '../x': it resolves to"),
            (with("/etc", "out", "{}"), "model '/etc': it resolves to"),
            (
                with("missing", "out", "{}"),
                "model 'missing': no such file",
            ),
            (
                with("model", "../out", "{}"),
                "output '../out': it resolves to",
            ),
            (with("model", "taken", "{}"), "output 'taken' exists"),
            (
                with("model", "no/dir/out", "{}"),
                "output 'no/dir/out': the directory to write it in",
            ),
            (
                with("model", "out", r#"{"bits": 4}"#),
                "config: unknown key 'bits'",
            ),
            (
                with("model", "out", r#"{"bit_width": "four"}"#),
                "config: key 'bit_width'",
            ),
            (
                with("model", "out", r#"{"calibration": "../acts.parquet"}"#),
                "calibration '../acts.parquet': it resolves to",
            ),
            (
                with("model", "out", r#"{"recipe": "Q4_K_M"}"#),
                "config: recipe: applies to GGUF output only",
            ),
        ] {
            let e = jobs.submit(request.clone()).unwrap_err().to_string();
            assert!(e.starts_with(message), "{request:?}: {e}");
        }
        assert!(jobs.list().is_empty());
        // The format follows a .gguf output, and a GGUF scheme's width follows the scheme.
        let id = jobs
            .submit(with("model", "out.gguf", r#"{"scheme": "q8_0"}"#))
            .unwrap();
        let job = jobs.get(&id).unwrap();
        assert_eq!(job["config"]["format"], "gguf");
        assert_eq!(job["config"]["bit_width"], 8);
    }
}
