//! Decision spans: sampling, and batching spans for export, off the Check path.
//!
//! Spans are written by the telemetry thread from finished decisions (start time and duration are
//! the Check's own) straight into OTLP wire format (`wire`), batched, and exported by `otlp`. The
//! SDK's tracer, batch processor and exporter are not used: they would put span work on the Check
//! path, build every span twice (SDK span data, then its protobuf form) and drop spans without
//! telling how many; here every span lost to a full queue or a failed export is counted
//! (`egressd_spans_dropped_total`). The SDK provides the samplers, id generation and W3C parsing.

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample};
use tokio::sync::mpsc;

use super::metrics::{DROP_EXPORT_FAILED, DROP_QUEUE_FULL, Metrics};
use super::otlp::ExportHealth;
use super::record::DecisionRecord;
use super::recycle::Recycled;
use super::wire::{EncodedSpans, SpanWriter};
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

/// The most bytes of spans one export carries (plus the span that crossed it): 3 MiB, under the
/// 4 MiB gRPC servers and the OpenTelemetry Collector's receiver accept by default.
pub const MAX_BATCH_BYTES: usize = 3 << 20;

/// Collects sampled spans (already encoded) into batches and hands full batches to the export task.
pub struct SpanBatcher {
    batch: EncodedSpans,
    writer: SpanWriter,
    max_batch: usize,
    tx: mpsc::Sender<EncodedSpans>,
    /// Buffers of exported batches, back from the exporter (`recycle`).
    recycled: Recycled,
    metrics: Metrics,
    health: ExportHealth,
}

impl SpanBatcher {
    pub fn new(
        tx: mpsc::Sender<EncodedSpans>,
        recycled: Recycled,
        max_batch: usize,
        metrics: Metrics,
        health: ExportHealth,
    ) -> Self {
        let (batch, writer) = (EncodedSpans::default(), SpanWriter::default());
        SpanBatcher { batch, writer, max_batch, tx, recycled, metrics, health }
    }

    /// Encodes the span of one decision into the current batch.
    pub fn push(&mut self, record: &DecisionRecord<'_>, ids: &SpanIds) {
        if self.accepts() {
            self.writer.append(&mut self.batch, record, ids);
            self.flush_if_full();
        }
    }

    /// Encodes the span of a detector signal (in the trace `ids` names).
    pub fn push_signal(&mut self, signal: &crate::detect::Signal, ids: &super::signals::SignalIds) {
        if self.accepts() {
            self.writer.append_signal(&mut self.batch, signal, ids);
            self.flush_if_full();
        }
    }

    /// Encodes the span of a DNS firewall query.
    pub fn push_dns(&mut self, event: &super::dns::DnsEvent, ids: &SpanIds) {
        if self.accepts() {
            self.writer.append_dns(&mut self.batch, event, ids);
            self.flush_if_full();
        }
    }

    /// Whether a span now has anywhere to go. Not while the collector is failing (the exporter
    /// probes it and says when it is back), nor while the export queue is full (a stalled
    /// collector): such a span would be encoded only to be dropped with its batch, so it is
    /// dropped before, counted the same way.
    fn accepts(&mut self) -> bool {
        if self.health.is_failing() {
            self.metrics.spans_dropped.get_or_create(&DROP_EXPORT_FAILED).inc();
            return false;
        }
        if self.tx.capacity() == 0 {
            self.metrics.spans_dropped.get_or_create(&DROP_QUEUE_FULL).inc();
            return false;
        }
        true
    }

    /// A batch leaves at `max_batch` spans, or sooner when its bytes near the collectors' 4 MiB
    /// message limit: spans carrying long request values (up to `record::MAX_FACT_BYTES` each)
    /// would otherwise make an export every collector rejects whole.
    fn flush_if_full(&mut self) {
        if self.batch.count >= self.max_batch || self.batch.bytes.len() >= MAX_BATCH_BYTES {
            self.flush();
        }
    }

    /// Hands the current batch to the exporter without waiting; a full export queue (collector
    /// slow or down) drops the batch, counted.
    pub fn flush(&mut self) {
        if self.batch.count == 0 {
            return;
        }
        // The next batch starts with the room this one needed (no regrowing from empty), in a
        // buffer the exporter is done with when one came back.
        let room = self.batch.bytes.len();
        let next = EncodedSpans { bytes: self.recycled.take(room), count: 0 };
        let batch = std::mem::replace(&mut self.batch, next);
        if let Err(e) = self.tx.try_send(batch) {
            let lost = match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b.count,
            };
            self.metrics.spans_dropped.get_or_create(&DROP_QUEUE_FULL).inc_by(lost as u64);
        }
    }

    /// At shutdown: waits for room for the last batch (the exporter is still draining).
    pub fn finish(mut self) {
        let batch = std::mem::take(&mut self.batch);
        if batch.count > 0 {
            let n = batch.count as u64;
            if self.tx.blocking_send(batch).is_err() {
                self.metrics.spans_dropped.get_or_create(&DROP_QUEUE_FULL).inc_by(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceFlags;

    fn parent(sampled: bool) -> SpanContext {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(TraceId::from(7u128), SpanId::from(9u64), flags, true, TraceState::default())
    }

    fn event() -> super::super::record::CheckEvent {
        let text = include_str!("../../integration/fixtures/semantics.yaml");
        let policy = std::sync::Arc::new(
            crate::policy::compile(&crate::policy::PolicySource::from_text("f.yaml", text), 0).unwrap(),
        );
        let request =
            crate::testing::http_check("spiffe://corp.example/ns/payments/sa/api", "GET", "api.stripe.com", &[]);
        let (verdict, facts) = crate::testing::checked(&policy, &request, &Default::default());
        let start = crate::clock::wall_now();
        super::super::record::CheckEvent { facts, verdict, policy, start, duration: std::time::Duration::ZERO }
    }

    /// Spans with nowhere to go are not encoded: a failing collector's are `export-failed`, a full
    /// export queue's `queue-full`; once the collector is back, spans are encoded again.
    #[test]
    fn spans_with_nowhere_to_go_are_counted_and_not_encoded() {
        let (tx, mut rx) = mpsc::channel(1);
        let (metrics, health) = (Metrics::default(), ExportHealth::default());
        let mut batcher =
            SpanBatcher::new(tx, crate::telemetry::recycle::recycling().1, 2, metrics.clone(), health.clone());
        let event = event();
        let mut text = String::new();
        let record = DecisionRecord::describe_in(&event, &mut text);
        let ids = DecisionSampler::new(Sampler::AlwaysOn, false).sample(None, Outcome::Allow);
        let dropped = |r| metrics.spans_dropped.get_or_create(r).get();

        health.set_failing(true);
        batcher.push(&record, &ids);
        assert_eq!((batcher.batch.count, dropped(&DROP_EXPORT_FAILED)), (0, 1));
        health.set_failing(false);
        batcher.push(&record, &ids);
        batcher.push(&record, &ids); // a full batch of 2, handed to the exporter's queue
        assert_eq!(rx.try_recv().map(|b| b.count).ok(), Some(2));
        batcher.push(&record, &ids);
        batcher.push(&record, &ids); // the queue (of one batch) is full now
        // So the next span is not encoded.
        batcher.push(&record, &ids);
        assert_eq!((batcher.batch.count, dropped(&DROP_QUEUE_FULL)), (0, 1));
    }

    /// Spans as large as a request can make them leave in batches under the collectors' limit,
    /// before the batch reaches its span count.
    #[test]
    fn a_batch_of_large_spans_leaves_before_the_collectors_message_limit() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut batcher = SpanBatcher::new(
            tx,
            crate::telemetry::recycle::recycling().1,
            4096,
            Metrics::default(),
            ExportHealth::default(),
        );
        let long = "x".repeat(crate::telemetry::record::MAX_FACT_BYTES);
        let mut event = event();
        event.facts = crate::telemetry::record::RequestFacts::pack_from({
            let mut v = crate::telemetry::record::FactValues::default();
            v.set(crate::telemetry::record::Fact::RequestId, Some(&long));
            v.set(crate::telemetry::record::Fact::Principal, Some(&long));
            v.set(crate::telemetry::record::Fact::Method, Some(&long));
            v
        });
        let mut text = String::new();
        let record = DecisionRecord::describe_in(&event, &mut text);
        let ids = DecisionSampler::new(Sampler::AlwaysOn, false).sample(None, Outcome::Allow);
        for _ in 0..1000 {
            batcher.push(&record, &ids);
        }
        let batch = rx.try_recv().expect("a batch left before 4096 spans");
        assert!(batch.count < 1000, "{}", batch.count);
        assert!(batch.bytes.len() < 4 << 20, "{} bytes", batch.bytes.len());
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
