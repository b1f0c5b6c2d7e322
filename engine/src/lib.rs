//! Errand's job engine: the registry of jobs, the event hub, the job kinds and the apalis queue,
//! tied together by [`Engine`]. This crate knows nothing of HTTP, sessions or Leptos: the web
//! layer hands it an [`Owner`] and plain values, and gets plain values back.

pub mod console;
mod db;
pub mod files;
pub mod gates;
pub mod hub;
pub mod kinds;
mod lifecycle;
pub mod limits;
pub mod model;
pub mod queue;
pub mod registry;
mod relay;
pub mod schedules;
mod supervisor;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod waiting;
pub mod worker;

pub use console::{BulkAction, BulkStatus, ConsoleError, Operator, PAUSED_STAGE, Role};
pub use files::{Files, StoredUpload, UploadId, UploadMeta};
pub use hub::{Hub, JobEvent, Shared, Subscription, Topic};
pub use kinds::{
    FormFields, InvalidInput, JobError, JobKind, Kinds, MAX_DELAY_MS, RetryPolicy, SubmitContext,
    form_delay, form_priority,
};
pub use lifecycle::CancelOutcome;
pub use model::{Job, JobId, JobState, LogLine, Owner, now_ms};
pub use queue::{Queue, QueueError, QueuedJob};
pub use registry::{
    AttemptInfo, AuditEntry, FinishedCount, JobFilter, JobQuery, Registry, RegistryError,
    StateCounts, Timing, WorkerInfo,
};
pub use worker::JobContext;

use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Where the engine keeps its data and how it runs jobs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Folder for the registry and queue files; created if missing.
    pub data_dir: PathBuf,
    /// How many jobs one process runs at once. Kinds that do heavy synchronous work also take
    /// one of the process's CPU slots (one per core), so this can be well above the core count.
    pub concurrency: usize,
    /// How long shutdown waits for running jobs before giving up on them.
    pub shutdown_grace: Duration,
    /// Internal addresses (loopback, private…) that webhook jobs may call anyway.
    pub webhook_allow: Vec<std::net::IpAddr>,
    /// Where the job registry lives (`sqlite://…` or `postgres://…`); `errand.db` in the data
    /// dir when `None`.
    pub database_url: Option<String>,
    /// Where the queue lives (`sqlite://…` or `postgres://…`); `queue.db` in the data dir when
    /// `None`.
    pub queue_url: Option<String>,
    /// Most jobs one owner may have queued or running; `None` for no quota. Submits check it
    /// before they insert, so concurrent submits of one owner can pass it by a few.
    pub max_active_per_owner: Option<u32>,
    /// What this process says of itself on the console's workers page.
    pub about: About,
    /// Recurring jobs (`--schedules`), run by every process that runs workers.
    pub schedules: Vec<schedules::Schedule>,
    /// Concurrency and rate limits per kind or per key (`--limits`); none by default. Every
    /// process that runs workers should have the same.
    pub limits: gates::Limits,
    /// How long a queued job waits before its priority rises a level (see [`queue::Aging`]).
    /// Every process sharing a queue should have the same.
    pub priority_aging: Duration,
}

impl EngineConfig {
    /// Defaults for a data dir: 64 jobs at once, 30 s of grace at shutdown.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            concurrency: 64,
            shutdown_grace: Duration::from_secs(30),
            webhook_allow: Vec::new(),
            database_url: None,
            queue_url: None,
            max_active_per_owner: None,
            about: About {
                role: "serve".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            schedules: Vec::new(),
            limits: gates::Limits::default(),
            priority_aging: queue::DEFAULT_AGING_STEP,
        }
    }
}

/// Any failure of the engine's storage. Its text is for logs, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("could not create the data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the data dir {path} is in use by another errand process ({holder}); one process owns \
         a SQLite data dir: stop that process or choose another --data-dir"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("worker failed: {0}")]
    Worker(String),
    #[error("file storage error: {0}")]
    Files(#[from] std::io::Error),
    #[error(
        "a queue other processes share (Postgres, Redis) needs a registry they share too: \
         set the database URL to postgres://…"
    )]
    Unshared,
    #[error("schedule {name:?}: {message}")]
    Schedule { name: String, message: String },
    #[error(transparent)]
    Limit(#[from] gates::LimitError),
}

/// The data dirs whose lock this process holds. Opening an engine again on one of them in the
/// same process (a restart in a test, an application embedding the engine) shares the lock
/// instead of failing against itself; other processes are refused.
static LOCKS_HELD: std::sync::Mutex<Vec<(PathBuf, Weak<std::fs::File>)>> =
    std::sync::Mutex::new(Vec::new());

/// Takes `<data dir>/errand.lock` for this process (released when the process ends, however it
/// ends) and writes the process id into it; fails with [`EngineError::Locked`], naming the
/// holder, when another process has it.
fn lock_data_dir(dir: &std::path::Path) -> Result<Arc<std::fs::File>, EngineError> {
    use std::io::{Seek, Write};
    let path = dir.canonicalize()?.join("errand.lock");
    let mut held = LOCKS_HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    held.retain(|(_, file)| file.strong_count() > 0);
    if let Some(file) = held
        .iter()
        .find(|(held, _)| *held == path)
        .and_then(|(_, file)| file.upgrade())
    {
        return Ok(file);
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "pid {}", std::process::id())?;
            let file = Arc::new(file);
            held.push((path, Arc::downgrade(&file)));
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "process id unknown".to_owned(),
                pid => pid.to_owned(),
            };
            Err(EngineError::Locked { path, holder })
        }
        Err(std::fs::TryLockError::Error(err)) => Err(err.into()),
    }
}

/// Why a submission made no job.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The input was not a valid job; nothing was stored.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The owner already has as many jobs queued or running as its quota allows; nothing was
    /// stored.
    #[error(
        "this session already has {0} jobs queued or running, its limit; \
         wait for some to finish or cancel some"
    )]
    OverQuota(u32),
    /// Storage failed; nothing was queued.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A job with its log and the jobs that retry it by hand.
#[derive(Debug, Clone)]
pub struct JobDetail {
    pub job: Job,
    pub logs: Vec<LogLine>,
    pub retried_as: Vec<JobId>,
}

/// How a submission should be queued, besides its parameters.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// A key the client chose; a second submission with the same key makes no second job.
    pub idempotency_key: Option<String>,
    /// Not before this time (unix ms).
    pub run_at: Option<i64>,
    /// The job this one retries.
    pub retry_of: Option<JobId>,
    /// Higher runs first, within [`model::PRIORITIES`]; [`model::DEFAULT_PRIORITY`] if `None`.
    pub priority: Option<i64>,
}

/// What a submission made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub id: JobId,
    /// True when the idempotency key named an earlier job and nothing new was made.
    pub existing: bool,
}

/// A new job's parameters, as they arrived.
#[derive(Debug, Clone)]
pub enum Params {
    /// JSON, from the API.
    Json(Value),
    /// Text fields, from an HTML form.
    Form(FormFields),
}

/// The engine: cheap to clone, shared by the web layer and the workers.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// An engine handle that does not keep it open (for background tasks that should end with it).
#[derive(Debug, Clone)]
pub(crate) struct WeakEngine(Weak<Inner>);

impl WeakEngine {
    pub(crate) fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    /// This process's name among the workers sharing the queue; unique per start.
    node: String,
    registry: Registry,
    queue: Queue,
    hub: Hub,
    kinds: Kinds,
    files: Files,
    running: worker::Running,
    /// One permit per core, held by handlers while they do heavy synchronous work.
    cpu_slots: Arc<tokio::sync::Semaphore>,
    /// The data dir's lock, held while the engine is open when any store is SQLite.
    _lock: Option<Arc<std::fs::File>>,
    /// Where the reconciler's next pass starts (see `Engine::reconcile`).
    reconcile_from: tokio::sync::Mutex<Option<(i64, JobId)>>,
    /// Bulk actions and the paused kinds as last read (see `console`).
    console: console::ConsoleState,
    /// What this process says of itself on the console's workers page.
    about: About,
    /// True while this process's workers run (for readiness checks).
    workers_up: std::sync::atomic::AtomicBool,
}

/// What a process says of itself to operators (the console's workers page).
#[derive(Debug, Clone, Default)]
pub struct About {
    /// `serve`, `web` or `worker`.
    pub role: String,
    pub version: String,
}

impl Engine {
    /// Opens the registry and queue in the data dir, with the built-in kinds.
    pub async fn open(config: EngineConfig) -> Result<Self, EngineError> {
        let kinds = Kinds::builtin(&config.webhook_allow);
        Self::open_with_kinds(config, kinds).await
    }

    /// Opens the engine with a chosen table of kinds.
    pub async fn open_with_kinds(config: EngineConfig, kinds: Kinds) -> Result<Self, EngineError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| EngineError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        // Only one process may use a SQLite registry or queue: a second one would run the
        // first one's jobs as if they were a crash's leftovers.
        let shared = |url: &Option<String>| url.as_deref().is_some_and(|url| !db::is_sqlite(url));
        let lock = if shared(&config.database_url) && shared(&config.queue_url) {
            None
        } else {
            Some(lock_data_dir(&config.data_dir)?)
        };
        let registry_file = config.data_dir.join("errand.db");
        let queue_file = config.data_dir.join("queue.db");
        let (registry, queue) = match (&config.database_url, &config.queue_url) {
            // The embedded default: one SQLite file holds the jobs and the queue, so a submit
            // is one transaction.
            (None, None) => {
                let registry = Registry::open_with_queue(&registry_file).await?;
                let queue = Queue::in_registry(&registry, &queue_file).await?;
                (registry, queue)
            }
            // Registry and queue in one Postgres database: a submit is one transaction there
            // too.
            (Some(database), Some(queue)) if database == queue && db::is_postgres(database) => {
                let registry = Registry::connect_with_queue(database).await?;
                let queue = Queue::connect(queue).await?;
                (registry, queue)
            }
            (database, queue) => {
                let registry = match database {
                    Some(url) => Registry::connect(url).await?,
                    None => Registry::open(&registry_file).await?,
                };
                let queue = match queue {
                    Some(url) => Queue::connect(url).await?,
                    None => Queue::open(&queue_file).await?,
                };
                (registry, queue)
            }
        };
        if queue.is_shared() && registry.postgres().is_none() {
            return Err(EngineError::Unshared);
        }
        queue.set_aging(config.priority_aging);

        let files = Files::open(config.data_dir.join("files"))?;
        // A schedule whose kind or parameters are wrong would fail at every tick: refuse it now.
        for schedule in &config.schedules {
            let cx = SubmitContext {
                owner: &schedule.owner(),
                files: &files,
            };
            kinds
                .params_from_json(&schedule.kind, schedule.params.clone(), &cx)
                .map_err(|err| EngineError::Schedule {
                    name: schedule.name.clone(),
                    message: err.to_string(),
                })?;
        }
        config.limits.check(&kinds)?;
        if !config.limits.is_empty() {
            registry.gate_kinds(config.limits.kinds());
        }
        let about = config.about.clone();
        let engine = Self {
            inner: Arc::new(Inner {
                config,
                node: format!("errand-{}", ulid::Ulid::generate()),
                registry,
                queue,
                hub: Hub::new(),
                kinds,
                files,
                running: worker::Running::default(),
                cpu_slots: Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                )),
                _lock: lock,
                reconcile_from: tokio::sync::Mutex::new(None),
                console: console::ConsoleState::default(),
                about,
                workers_up: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        // Processes sharing the jobs share their live events too: over Redis when the queue is
        // there, else over the Postgres registry.
        let transport = match (engine.queue().redis(), engine.registry().postgres()) {
            (Some(redis), Some(_)) => Some(relay::Transport::Redis {
                client: redis.client().clone(),
                channel: redis.events_channel().to_owned(),
            }),
            (None, Some(pool)) => Some(relay::Transport::Postgres(pool.clone())),
            (_, None) => None,
        };
        if let Some(transport) = transport {
            relay::start(&engine, transport);
        }
        Ok(engine)
    }

    /// This process's worker name, unique per start.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// True while this process's workers run (set by `run_workers`).
    pub fn workers_running(&self) -> bool {
        self.inner
            .workers_up
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks that the registry and the queue answer (a readiness probe).
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.registry().ping().await?;
        self.queue().ping().await?;
        Ok(())
    }

    /// True when other processes may share this engine's jobs (a Postgres registry).
    pub fn is_shared(&self) -> bool {
        self.registry().postgres().is_some()
    }

    pub(crate) fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn kinds(&self) -> &Kinds {
        &self.inner.kinds
    }

    /// The kinds' concurrency and rate limits.
    pub fn limits(&self) -> &gates::Limits {
        &self.inner.config.limits
    }

    /// Gives the jobs waiting for a slot of `key` (see [`gates`]) as many new tasks as the
    /// key has free slots. A lost wake-up is repaired by the reconciler, which calls this for
    /// every key some job waits for.
    pub(crate) async fn wake_waiting(&self, key: &str) {
        // A key whose limit is gone (the limits file changed across a restart) frees them all.
        let slots = self
            .limits()
            .of_key(key)
            .and_then(|limit| limit.concurrency)
            .unwrap_or(u32::MAX);
        let woken = match self.registry().wake_waiting(key, slots).await {
            Ok(woken) => woken,
            Err(err) => {
                tracing::warn!(key, %err, "could not wake the jobs waiting for a slot");
                return;
            }
        };
        for task in woken {
            // A failed push leaves the job queued with no task, which the reconciler repairs.
            if let Err(err) = self.queue().push(task).await {
                tracing::warn!(job_id = %task.job_id, %err, "could not push a woken job");
            }
        }
    }

    pub fn files(&self) -> &Files {
        &self.inner.files
    }

    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    pub(crate) fn running(&self) -> &worker::Running {
        &self.inner.running
    }

    pub(crate) fn cpu_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.cpu_slots
    }

    /// Validates and records a job for `owner`, queues it and returns its id at once. With an
    /// idempotency key this owner already used, no job is made and the earlier one is returned.
    #[tracing::instrument(skip(self, params, options), fields(job_id))]
    pub async fn submit(
        &self,
        owner: &Owner,
        kind: &str,
        params: Params,
        options: SubmitOptions,
    ) -> Result<Submitted, SubmitError> {
        let kinds = self.kinds();
        let cx = SubmitContext {
            owner,
            files: self.files(),
        };
        let params = match params {
            Params::Json(value) => kinds.params_from_json(kind, value, &cx)?,
            Params::Form(fields) => kinds.params_from_form(kind, &fields, &cx)?,
        };
        if let Some(key) = &options.idempotency_key
            && (key.is_empty() || key.len() > 200)
        {
            return Err(
                InvalidInput::field("idempotency_key", "must be 1 to 200 characters").into(),
            );
        }
        if options
            .run_at
            .is_some_and(|at| at > model::now_ms() + kinds::MAX_DELAY_MS)
        {
            return Err(InvalidInput::field("run_at", "must be within 30 days").into());
        }
        let priority = match options.priority {
            None => model::DEFAULT_PRIORITY,
            Some(level) => u8::try_from(level)
                .ok()
                .filter(|level| model::PRIORITIES.contains(level))
                .ok_or_else(|| InvalidInput::field("priority", kinds::PRIORITY_RANGE))?,
        };
        if let Some(max) = self.inner.config.max_active_per_owner {
            let active = self
                .registry()
                .count_active(owner, max)
                .await
                .map_err(EngineError::from)?;
            if active >= max {
                return Err(SubmitError::OverQuota(max));
            }
        }
        let mut job = Job::new(owner.clone(), kind, params, kinds.policy(kind).max_attempts);
        job.idempotency_key = options.idempotency_key;
        job.run_at = options.run_at.filter(|at| *at > job.created_at);
        job.retry_of = options.retry_of;
        job.priority = priority;
        job.stage = self.paused_stage(kind).await;
        tracing::Span::current().record("job_id", tracing::field::display(job.id));
        self.enqueue(job).await
    }

    /// Records a new job and pushes its first delivery. This runs to its end even when the
    /// caller stops waiting (an HTTP request whose client disconnected is dropped mid-way), so a
    /// dropped request cannot leave a recorded job unpushed; a crash in between is repaired by
    /// the reconciler (see `Engine::reconcile`).
    async fn enqueue(&self, job: Job) -> Result<Submitted, SubmitError> {
        let engine = self.clone();
        tokio::spawn(async move { engine.enqueue_now(job).await })
            .await
            .map_err(|err| EngineError::Worker(format!("the submit task failed: {err}")))?
    }

    async fn enqueue_now(&self, job: Job) -> Result<Submitted, SubmitError> {
        if let Some(existing) = self
            .registry()
            .insert(&job)
            .await
            .map_err(EngineError::from)?
        {
            return Ok(Submitted {
                id: existing.id,
                existing: true,
            });
        }
        if self.registry().writes_tasks() {
            // Its task was committed with it.
            self.queue().wake();
        } else if let Err(err) = self.queue().push(QueuedJob::of(&job)).await {
            // Never leave a job that no worker will ever see.
            if let Err(cleanup) = self.registry().delete(job.id).await {
                tracing::error!(%cleanup, "could not remove a job whose push failed");
            }
            return Err(EngineError::from(err).into());
        }
        let id = job.id;
        telemetry::submitted(&job.kind);
        self.hub().job_changed(job);
        Ok(Submitted {
            id,
            existing: false,
        })
    }

    /// `owner`'s job `id`, or `None` if it does not exist or belongs to someone else.
    pub async fn job(&self, owner: &Owner, id: JobId) -> Result<Option<Job>, EngineError> {
        Ok(self.registry().get_owned(owner, id).await?)
    }

    /// `owner`'s job `id` with its kept log lines and the jobs that retry it.
    pub async fn job_with_logs(
        &self,
        owner: &Owner,
        id: JobId,
    ) -> Result<Option<JobDetail>, EngineError> {
        match self.job(owner, id).await? {
            Some(job) => Ok(Some(self.detail_of(job).await?)),
            None => Ok(None),
        }
    }

    /// `job` with its kept log lines and the jobs that retry it.
    pub(crate) async fn detail_of(&self, job: Job) -> Result<JobDetail, EngineError> {
        let logs = self.registry().logs(job.id).await?;
        let retried_as = self.registry().retries_of(job.id).await?;
        Ok(JobDetail {
            job,
            logs,
            retried_as,
        })
    }

    /// The jobs that match `filter` (always one owner's), newest first, older than `before`.
    pub async fn list(
        &self,
        filter: &JobFilter,
        limit: u32,
        before: Option<JobId>,
    ) -> Result<Vec<Job>, EngineError> {
        Ok(self.registry().list(filter, before, limit).await?)
    }

    /// Watches a job or an owner's jobs. Subscribe before reading a snapshot so no change is
    /// missed in between.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        self.hub().subscribe(topic)
    }
}
