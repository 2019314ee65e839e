//! Observability of every decision: metrics, OpenTelemetry spans and the audit log.
//!
//! ```text
//! Check path ──try_send──▶ bounded queue ──▶ telemetry thread ──▶ audit log (JSON lines, fsync policy)
//!  (counters, histogram:                      (describe, sample,  └─▶ span batches ──▶ export task ──▶ OTLP/gRPC
//!   atomics only)                              build spans)
//! ```
//! The Check path never waits on telemetry: a full queue drops the record and counts it
//! (`egressd_audit_records_dropped_total`, `egressd_spans_dropped_total`, reason `queue-full`).
//! On shutdown every record accepted into the queue is written and fsynced, and the last spans
//! are exported (bounded wait), before `shutdown` returns.

pub mod audit;
pub mod context;
pub mod dns;
mod flows;
mod json_line;
pub mod metrics;
pub mod otlp;
mod recent;
pub mod record;
mod recycle;
pub mod signals;
pub mod spans;
pub mod totals;
pub mod wire;

use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::Sampler;
use prometheus_client::metrics::counter::Counter;

use audit::{AuditConfig, AuditError, AuditLog};
use context::Propagators;
use metrics::{DROP_QUEUE_FULL, DROP_WRITE_FAILED, Metrics};
use record::{CheckEvent, DecisionRecord};
use spans::{DecisionSampler, SpanBatcher};

use crate::flows::live::SharedFlows;

/// How often buffered audit records and partial span batches are written out.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How long the telemetry thread sleeps when the queue is empty.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Decisions handled between two looks at the flush timer.
const MAX_DRAIN: usize = 1024;
/// Batches waiting for the exporter before new ones are dropped.
const EXPORT_QUEUE_BATCHES: usize = 8;

pub use otlp::OtlpConfig;

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub otlp: Option<OtlpConfig>,
    pub audit: Option<AuditConfig>,
    pub sampler: Sampler,
    /// Apply the sampler to denies and would-denies too (default: they are always recorded).
    pub sample_denies: bool,
    /// Decision records the queue holds before the Check path starts dropping (and counting).
    pub queue_capacity: usize,
    /// The live flow table the telemetry thread feeds (`GET /flows`), if kept.
    pub flows: Option<SharedFlows>,
    /// Run the detectors on every decision (`GET /signals`), with this state.
    pub detect: Option<signals::DetectSetup>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp: None,
            audit: None,
            sampler: Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            sample_denies: false,
            queue_capacity: 16 * 1024,
            flows: None,
            detect: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
    #[error("cannot start the telemetry thread: {0}")]
    Thread(std::io::Error),
}

// Decisions, the common message, are carried unboxed on purpose (see `Decision`).
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// By value: a box would be allocated on the Check path's thread and freed on the telemetry
    /// thread, a cross-thread free per decision (measured ~0.6 us a check of server CPU).
    Decision(CheckEvent),
    /// A stream's totals from the gateway's access log (`accesslog`); see `totals`.
    Totals(Box<totals::StreamTotals>),
    /// A DNS firewall query (`dns`).
    Dns(Box<dns::DnsEvent>),
    /// Write out everything queued before this message, then stop.
    Shutdown(tokio::sync::oneshot::Sender<()>),
}

/// The Check path's handle: metrics, and the queue to the telemetry thread when spans or the
/// audit log are on. Cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub metrics: Metrics,
    queue: Option<SyncSender<Msg>>,
    spans_on: bool,
    audit_on: bool,
    detect_on: bool,
    /// The detectors read the flow table's timelines (the Check path notes them per thread)
    /// rather than queued decisions: when there is a flow table and a policy to read thresholds
    /// from, and decisions are not queued anyway.
    detect_via_flows: bool,
    flows: Option<SharedFlows>,
    signals: Option<signals::SharedSignals>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("spans", &self.spans_on).field("audit", &self.audit_on).finish()
    }
}

/// The running telemetry thread and export task; `shutdown` drains them.
pub struct TelemetryTasks {
    metrics: Metrics,
    queue: Option<SyncSender<Msg>>,
    worker: Option<std::thread::JoinHandle<()>>,
    exporter: Option<tokio::task::JoinHandle<()>>,
}

impl Telemetry {
    /// Metrics only: no spans, no audit log.
    pub fn metrics_only() -> Self {
        Telemetry::default()
    }

    /// Starts the telemetry thread (and, with OTLP, the export task on the current runtime).
    pub fn start(config: TelemetryConfig) -> Result<(Telemetry, TelemetryTasks), TelemetryError> {
        let metrics = Metrics::default();
        if config.otlp.is_none() && config.audit.is_none() && config.flows.is_none() && config.detect.is_none() {
            let tasks = TelemetryTasks { metrics: metrics.clone(), queue: None, worker: None, exporter: None };
            return Ok((Telemetry { metrics, ..Default::default() }, tasks));
        }
        let audit = config.audit.map(AuditLog::open).transpose()?;
        let (batches, exporter) = match &config.otlp {
            Some(otlp) => {
                let (recycler, recycled) = recycle::recycling();
                let exporter = otlp::OtlpExporter::new(otlp)?.recycling(recycler);
                let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_QUEUE_BATCHES);
                let health = otlp::ExportHealth::default();
                let task = tokio::spawn(otlp::export_loop(exporter, rx, metrics.clone(), health.clone()));
                (Some(SpanBatcher::new(tx, recycled, otlp.max_batch, metrics.clone(), health)), Some(task))
            }
            None => (None, None),
        };
        let (spans_on, audit_on, detect_on) = (batches.is_some(), audit.is_some(), config.detect.is_some());
        let detect_via_flows = detect_on
            && !spans_on
            && !audit_on
            && config.flows.is_some()
            && config.detect.as_ref().is_some_and(|d| d.policy.is_some());
        let recent = config.detect.as_ref().map(|d| d.signals.clone());
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let worker = Worker {
            sampler: DecisionSampler::new(config.sampler, config.sample_denies),
            propagators: Propagators::default(),
            audit,
            batches,
            metrics: metrics.clone(),
            audit_failures_logged: 0,
            flows: config.flows.clone(),
            detect: config.detect.map(signals::DetectSink::new),
            recent: recent::RecentConnects::new(recent::CAPACITY, metrics.stream_ids_evicted.clone()),
            text: String::new(),
        };
        let handle = std::thread::Builder::new()
            .name("egressd-telemetry".into())
            .spawn(move || worker.run(rx))
            .map_err(TelemetryError::Thread)?;
        let telemetry = Telemetry {
            metrics,
            queue: Some(tx.clone()),
            spans_on,
            audit_on,
            detect_on,
            detect_via_flows,
            flows: config.flows,
            signals: recent,
        };
        let tasks =
            TelemetryTasks { metrics: telemetry.metrics.clone(), queue: Some(tx), worker: Some(handle), exporter };
        Ok((telemetry, tasks))
    }

    /// The live flow table, when the server keeps one.
    pub fn flows(&self) -> Option<&SharedFlows> {
        self.flows.as_ref()
    }

    /// The detectors' recent signals, when detection runs.
    pub fn signals(&self) -> Option<&signals::SharedSignals> {
        self.signals.as_ref()
    }

    /// Whether decisions of `policy` are queued for the telemetry thread: for spans, the audit
    /// log, or the detectors (when the policy keeps them on).
    #[inline]
    pub fn queues_decisions(&self, policy: &crate::policy::CompiledPolicy) -> bool {
        self.spans_on || self.audit_on || (self.detect_on && !self.detect_via_flows && policy.detection.enabled)
    }

    /// Whether checks of `policy` note their second and body in the flow table for the detectors
    /// (`flows::pending::Timeline`): cheaper than queueing every decision, and nothing else
    /// needs them queued.
    #[inline]
    pub fn notes_timelines(&self, policy: &crate::policy::CompiledPolicy) -> bool {
        self.detect_via_flows && policy.detection.enabled
    }

    /// Queues one decision without waiting. A full queue drops it, counted.
    pub fn submit(&self, event: CheckEvent) {
        let Some(queue) = &self.queue else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(Msg::Decision(event)) {
            self.count_queue_full();
        }
    }

    /// A record the queue had no room for: lost to the audit log and to the spans, where on.
    fn count_queue_full(&self) {
        if self.audit_on {
            self.metrics.audit_dropped.get_or_create(&DROP_QUEUE_FULL).inc();
        }
        if self.spans_on {
            self.metrics.spans_dropped.get_or_create(&DROP_QUEUE_FULL).inc();
        }
    }
}

impl Telemetry {
    /// Queues a stream's totals without waiting (the ALS stream never blocks). A full queue
    /// drops them, counted as a lost audit record.
    pub fn submit_totals(&self, totals: totals::StreamTotals) {
        let Some(queue) = &self.queue else { return };
        if queue.try_send(Msg::Totals(Box::new(totals))).is_err() && self.audit_on {
            self.metrics.audit_dropped.get_or_create(&DROP_QUEUE_FULL).inc();
        }
    }
}

impl TelemetryTasks {
    /// Writes out every queued record (audit flushed and fsynced), exports the last spans (waiting
    /// at most `export_timeout` for the collector), and stops. Call after the gRPC server stopped.
    pub async fn shutdown(mut self, export_timeout: Duration) {
        if let Some(queue) = self.queue.take() {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            // `send` waits for room; the thread is draining, so this returns promptly.
            let sent = tokio::task::spawn_blocking(move || queue.send(Msg::Shutdown(done_tx)).is_ok()).await;
            if matches!(sent, Ok(true)) {
                let _ = done_rx.await;
            }
        }
        if let Some(worker) = self.worker.take() {
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        }
        if let Some(exporter) = self.exporter.take()
            && tokio::time::timeout(export_timeout, exporter).await.is_err()
        {
            tracing::warn!("OTLP collector did not take the last spans within {export_timeout:?}; they are dropped");
        }
        // What was lost is said once more at exit, next to what was kept.
        let m = &self.metrics;
        type ByReason = prometheus_client::metrics::family::Family<metrics::ReasonLabel, Counter>;
        let dropped = |f: &ByReason, r| f.get_or_create(r).get();
        tracing::info!(
            audit_written = m.audit_written.get(),
            audit_dropped_queue_full = dropped(&m.audit_dropped, &DROP_QUEUE_FULL),
            audit_dropped_write_failed = dropped(&m.audit_dropped, &DROP_WRITE_FAILED),
            spans_exported = m.spans_exported.get(),
            spans_dropped_queue_full = dropped(&m.spans_dropped, &DROP_QUEUE_FULL),
            spans_dropped_export_failed = dropped(&m.spans_dropped, &metrics::DROP_EXPORT_FAILED),
            "telemetry flushed"
        );
    }
}

struct Worker {
    sampler: DecisionSampler,
    propagators: Propagators,
    audit: Option<AuditLog>,
    batches: Option<SpanBatcher>,
    metrics: Metrics,
    audit_failures_logged: u64,
    flows: Option<SharedFlows>,
    detect: Option<signals::DetectSink>,
    /// Recent CONNECT decisions by request id, so a tunnel's totals name its trace.
    recent: recent::RecentConnects,
    /// The text fields of the record being written (`DecisionRecord::describe_in`).
    text: String,
}

impl Worker {
    /// Drains the queue, then sleeps a poll interval when it was empty. Polling rather than a
    /// blocking receive is deliberate: a receiver parked in `recv` makes every `try_send` on the
    /// Check path wake it (a futex call and a context switch per decision); a sleeping poller
    /// costs senders nothing.
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut last_flush = Instant::now();
        loop {
            let mut drained = 0;
            loop {
                match rx.try_recv() {
                    Ok(Msg::Decision(event)) => self.record(&event),
                    Ok(Msg::Totals(totals)) => self.totals(&totals),
                    Ok(Msg::Dns(event)) => self.record_dns(&event),
                    Ok(Msg::Shutdown(done)) => {
                        self.flush();
                        if let Some(d) = &mut self.detect {
                            d.save(true);
                        }
                        if let Some(b) = self.batches.take() {
                            b.finish();
                        }
                        let _ = done.send(());
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.flush();
                        return;
                    }
                }
                drained += 1;
                if drained >= MAX_DRAIN {
                    break;
                }
            }
            if last_flush.elapsed() >= FLUSH_INTERVAL {
                self.flush();
                last_flush = Instant::now();
            }
            if drained == 0 {
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }

    fn record(&mut self, event: &CheckEvent) {
        if let Some(table) = &self.flows {
            flows::record(table, event);
        }
        if let Some(d) = &mut self.detect {
            d.observe(event, &self.metrics);
        }
        if self.audit.is_none() && self.batches.is_none() {
            return;
        }
        let record = DecisionRecord::describe_in(event, &mut self.text);
        // A tunnel decision's parent is its CONNECT's decision (same request id, decided first).
        let parent = match (event.facts.tunnel_start, event.facts.get(record::Fact::RequestId)) {
            (Some(_), Some(id)) => self.recent.get(id).map(recent::ConnectIds::span_context),
            _ => self.propagators.parent(&event.facts),
        };
        let ids = self.sampler.sample(parent, event.verdict.outcome);
        self.recent.remember(event, &ids);
        if let Some(audit) = &mut self.audit {
            match audit.append(&record, &ids) {
                Ok(()) => {
                    self.metrics.audit_written.inc();
                }
                Err(e) => {
                    self.metrics.audit_dropped.get_or_create(&DROP_WRITE_FAILED).inc();
                    // Log the first failures and then every 1000th, not every record of a full disk.
                    if self.audit_failures_logged.is_multiple_of(1000) {
                        tracing::error!(error = %e, "audit record could not be written");
                    }
                    self.audit_failures_logged += 1;
                }
            }
        }
        if ids.sampled
            && let Some(batches) = &mut self.batches
        {
            batches.push(&record, &ids);
        }
        self.record_signals(Some((ids.trace_id, ids.span_id)));
    }

    /// The signals the last decision raised: an audit record each, and a span in its trace.
    /// `parent`: the trace and span of what raised them, when known.
    fn record_signals(&mut self, parent: Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)>) {
        let Some(d) = &self.detect else { return };
        for signal in &d.raised {
            let ids = parent.map(|(trace, span)| signals::SignalIds::child_of(trace, span));
            if let Some(audit) = &mut self.audit {
                match audit.append_json(&signals::audit_record(signal, ids.as_ref())) {
                    Ok(()) => {
                        self.metrics.audit_written.inc();
                    }
                    Err(e) => {
                        self.metrics.audit_dropped.get_or_create(&DROP_WRITE_FAILED).inc();
                        tracing::error!(error = %e, "signal audit record could not be written");
                    }
                }
            }
            if let (Some(batches), Some(ids)) = (&mut self.batches, &ids) {
                batches.push_signal(signal, ids);
            }
        }
    }

    fn record_dns(&mut self, event: &dns::DnsEvent) {
        // A query carries no trace context: its span starts a trace, sampled as a Check's is
        // (denies kept unless `sample_denies`); its audit line names that span, as a Check's does.
        let ids = self.sampler.sample(None, event.decision);
        if let Some(audit) = &mut self.audit {
            dns::count_written(&self.metrics, audit.append_with(|line| dns::encode(line, event, &ids)));
        }
        if ids.sampled
            && let Some(batches) = &mut self.batches
        {
            batches.push_dns(event, &ids);
        }
        if let Some(d) = &mut self.detect {
            d.observe_dns(event, &self.metrics);
            // A tunnel-like-name signal is a child of the query that raised it.
            self.record_signals(Some((ids.trace_id, ids.span_id)));
        }
    }

    fn flush(&mut self) {
        if let Some(audit) = &mut self.audit
            && let Err(e) = audit.flush()
        {
            tracing::error!(error = %e, "audit log flush failed");
        }
        if let Some(b) = &mut self.batches {
            b.flush();
        }
        if let Some(d) = &mut self.detect {
            d.save(false);
        }
        // Take in what the Check path counted per thread, so its maps stay small between reads;
        // the detectors read the timelines it noted.
        if let Some(table) = &self.flows {
            match &mut self.detect {
                Some(d) if d.reads_timelines() => {
                    d.refresh_config();
                    let metrics = &self.metrics;
                    table.take_in_with_timelines(|obs, timeline| d.observe_timeline(obs, timeline, metrics));
                }
                _ => drop(table.lock()),
            }
        }
    }
}
