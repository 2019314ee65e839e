//! Decision spans: sampling, building `SpanData`, and OTLP export off the Check path.
//!
//! Spans are built by the telemetry thread from finished decisions (start time and duration are
//! the Check's own), then exported in batches by a task on the runtime through
//! opentelemetry-otlp's gRPC exporter. The SDK's tracer and batch processor are not used: they
//! would put span work on the Check path and drop spans without telling us how many; here every
//! span lost to a full queue or a failed export is counted (`egressd_spans_dropped_total`).

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value as OtelValue};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample, SpanData, SpanExporter,
};
use tokio::sync::mpsc;

use super::metrics::{DROP_EXPORT_FAILED, DROP_QUEUE_FULL, Metrics};
use super::record::{DecisionRecord, Value};
use crate::policy::Outcome;

/// Name of every decision span (low cardinality: the details are attributes).
pub const SPAN_NAME: &str = "egress check";

/// The ids a decision gets, sampled or not (audit records name their trace either way).
#[derive(Debug, Clone)]
pub struct SpanIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanContext>,
    pub sampled: bool,
    pub trace_state: TraceState,
}

/// How decisions are sampled: the configured sampler (standard `OTEL_TRACES_SAMPLER` names),
/// except that denies and would-denies are kept unless `sample_denies` is set.
pub struct DecisionSampler {
    sampler: Sampler,
    sample_denies: bool,
    ids: RandomIdGenerator,
}

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error(
        "unknown trace sampler '{0}' (expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
    )]
    Unknown(String),
    #[error("trace sampler argument '{0}' is not a ratio between 0 and 1")]
    BadRatio(String),
}

/// Parses a sampler as `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` name it. Unlike the SDK,
/// which falls back silently, a typo is an error: an operator who asked for 1% should not get 100%.
pub fn parse_sampler(name: &str, arg: Option<&str>) -> Result<Sampler, SamplerError> {
    let ratio = || -> Result<f64, SamplerError> {
        match arg {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| SamplerError::BadRatio(a.to_string())),
        }
    };
    let parent_based = |root| Sampler::ParentBased(Box::new(root));
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" | "" => parent_based(Sampler::AlwaysOn),
        "parentbased_always_off" => parent_based(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent_based(Sampler::TraceIdRatioBased(ratio()?)),
        other => return Err(SamplerError::Unknown(other.to_string())),
    })
}

impl DecisionSampler {
    pub fn new(sampler: Sampler, sample_denies: bool) -> Self {
        DecisionSampler { sampler, sample_denies, ids: RandomIdGenerator::default() }
    }

    /// Ids and the sampling decision for one decision, under `parent` if it has one.
    pub fn sample(&self, parent: Option<SpanContext>, outcome: Outcome) -> SpanIds {
        let trace_id = parent.as_ref().map(|p| p.trace_id()).unwrap_or_else(|| self.ids.new_trace_id());
        let parent_cx = parent.clone().map(|p| opentelemetry::Context::new().with_remote_span_context(p));
        let result = self.sampler.should_sample(parent_cx.as_ref(), trace_id, SPAN_NAME, &SpanKind::Server, &[], &[]);
        let sampled_by_sampler = result.decision == SamplingDecision::RecordAndSample;
        let keep_deny = !self.sample_denies && outcome != Outcome::Allow;
        SpanIds {
            trace_id,
            span_id: self.ids.new_span_id(),
            parent,
            sampled: sampled_by_sampler || keep_deny,
            trace_state: result.trace_state,
        }
    }
}

/// Builds the span of one decision.
pub fn span_data(record: &DecisionRecord<'_>, ids: &SpanIds, scope: &InstrumentationScope) -> SpanData {
    let mut attributes = Vec::with_capacity(24);
    attributes.push(KeyValue::new("rpc.system", "grpc"));
    attributes.push(KeyValue::new("rpc.service", "envoy.service.auth.v3.Authorization"));
    attributes.push(KeyValue::new("rpc.method", "Check"));
    record.visit(&mut |key, value| {
        let value = match value {
            Value::Str(s) => OtelValue::String(s.to_string().into()),
            Value::Int(i) => OtelValue::I64(i),
            Value::Bool(b) => OtelValue::Bool(b),
        };
        attributes.push(KeyValue::new(key, value));
    });
    let event = record.event;
    SpanData {
        span_context: SpanContext::new(ids.trace_id, ids.span_id, TraceFlags::SAMPLED, false, ids.trace_state.clone()),
        parent_span_id: ids.parent.as_ref().map(|p| p.span_id()).unwrap_or(SpanId::INVALID),
        parent_span_is_remote: ids.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Borrowed(SPAN_NAME),
        start_time: event.start,
        end_time: event.start + event.duration,
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}

/// Collects sampled spans into batches and hands full batches to the export task.
pub struct SpanBatcher {
    batch: Vec<SpanData>,
    max_batch: usize,
    tx: mpsc::Sender<Vec<SpanData>>,
    metrics: Metrics,
    pub scope: InstrumentationScope,
}

impl SpanBatcher {
    pub fn new(tx: mpsc::Sender<Vec<SpanData>>, max_batch: usize, metrics: Metrics) -> Self {
        let scope = InstrumentationScope::builder("egressd").with_version(env!("CARGO_PKG_VERSION")).build();
        SpanBatcher { batch: Vec::with_capacity(max_batch), max_batch, tx, metrics, scope }
    }

    pub fn push(&mut self, span: SpanData) {
        self.batch.push(span);
        if self.batch.len() >= self.max_batch {
            self.flush();
        }
    }

    /// Hands the current batch to the exporter without waiting; a full export queue (collector
    /// slow or down) drops the batch, counted.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(self.max_batch));
        if let Err(e) = self.tx.try_send(batch) {
            let lost = match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b.len(),
            };
            self.metrics.spans_dropped.get_or_create(&DROP_QUEUE_FULL).inc_by(lost as u64);
        }
    }

    /// At shutdown: waits for room for the last batch (the exporter is still draining).
    pub fn finish(mut self) {
        let batch = std::mem::take(&mut self.batch);
        if !batch.is_empty() {
            let n = batch.len() as u64;
            if self.tx.blocking_send(batch).is_err() {
                self.metrics.spans_dropped.get_or_create(&DROP_QUEUE_FULL).inc_by(n);
            }
        }
    }
}

/// Exports batches until the batcher is gone. One export at a time: if the collector is slow,
/// batches wait in the bounded queue and the batcher drops (and counts) what does not fit.
pub async fn export_loop<E: SpanExporter>(exporter: E, mut rx: mpsc::Receiver<Vec<SpanData>>, metrics: Metrics) {
    while let Some(batch) = rx.recv().await {
        let n = batch.len() as u64;
        match exporter.export(batch).await {
            Ok(()) => {
                metrics.spans_exported.inc_by(n);
            }
            Err(e) => {
                metrics.spans_dropped.get_or_create(&DROP_EXPORT_FAILED).inc_by(n);
                tracing::warn!(spans = n, error = %e, "OTLP span export failed; spans dropped");
            }
        }
    }
    let _ = exporter.shutdown_with_timeout(Duration::from_secs(2));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(sampled: bool) -> SpanContext {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(TraceId::from(7u128), SpanId::from(9u64), flags, true, TraceState::default())
    }

    #[test]
    fn denies_are_kept_under_a_sampler_that_drops_allows() {
        let s = DecisionSampler::new(parse_sampler("traceidratio", Some("0")).unwrap(), false);
        assert!(!s.sample(None, Outcome::Allow).sampled);
        assert!(s.sample(None, Outcome::Deny).sampled);
        assert!(s.sample(None, Outcome::WouldDeny).sampled);
        let strict = DecisionSampler::new(parse_sampler("traceidratio", Some("0")).unwrap(), true);
        assert!(!strict.sample(None, Outcome::Deny).sampled, "sample_denies applies the sampler to denies");
    }

    #[test]
    fn parent_based_follows_the_parent_and_keeps_its_trace() {
        let s = DecisionSampler::new(parse_sampler("parentbased_always_on", None).unwrap(), true);
        let ids = s.sample(Some(parent(true)), Outcome::Allow);
        assert!(ids.sampled);
        assert_eq!(ids.trace_id, TraceId::from(7u128));
        assert_ne!(ids.span_id, SpanId::from(9u64));
        assert!(!s.sample(Some(parent(false)), Outcome::Allow).sampled);
    }

    #[test]
    fn sampler_names_and_errors() {
        assert!(matches!(parse_sampler("always_off", None), Ok(Sampler::AlwaysOff)));
        assert!(matches!(parse_sampler("traceidratio", Some("0.25")), Ok(Sampler::TraceIdRatioBased(r)) if r == 0.25));
        assert!(matches!(parse_sampler("traceidratio", Some("2")), Err(SamplerError::BadRatio(_))));
        assert!(matches!(parse_sampler("sometimes", None), Err(SamplerError::Unknown(_))));
    }
}
