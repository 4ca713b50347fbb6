import CoreMetrics
import Metrics

/// The service's own metrics, recorded through swift-metrics. The factory is passed in rather than taken
/// from the process-global bootstrap, so each app (and each test) exports its own series; which backend
/// collects them (Prometheus, for `/metrics`) is the composition root's choice.
public struct ServiceMetrics: Sendable {
    private let factory: any MetricsFactory

    package let queueDepth: CoreMetrics.Gauge
    package let running: CoreMetrics.Gauge
    package let submitLatency: CoreMetrics.Timer
    package let stepLatency: CoreMetrics.Timer
    package let inferenceLatency: CoreMetrics.Timer
    package let encodeLatency: CoreMetrics.Timer
    /// One claim of the next queued task (a store round trip), as the dispatcher saw it.
    package let claimLatency: CoreMetrics.Timer
    /// The submit's image intake by phase, and how long a task waited in the queue (for the benchmarks' per-job splits).
    package let intakeFetch: CoreMetrics.Timer
    package let intakeDecode: CoreMetrics.Timer
    package let intakePNG: CoreMetrics.Timer
    package let queueWait: CoreMetrics.Timer
    /// Live status streams (`/video/stream/{requestId}`) open now.
    package let openStreams: CoreMetrics.Meter

    /// Histogram bucket bounds for the timers whose default buckets would not resolve them; a backend with
    /// configurable buckets (Prometheus) reads these.
    public static let durationBuckets: [String: [Duration]] = [
        "i2v_submit_duration_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20].map(Duration.seconds),
        "i2v_step_duration_seconds": [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40].map(Duration.seconds),
        "i2v_inference_duration_seconds": [1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 2400].map(Duration.seconds),
        "i2v_encode_duration_seconds": [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30].map(Duration.seconds),
        "i2v_claim_duration_seconds": [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1].map(Duration.seconds),
        "i2v_intake_fetch_duration_seconds": intakeBuckets,
        "i2v_intake_decode_duration_seconds": intakeBuckets,
        "i2v_intake_png_duration_seconds": intakeBuckets,
        "i2v_queue_wait_seconds": [0.001, 0.01, 0.1, 1, 10, 60, 300, 900, 3600, 14400].map(Duration.seconds),
    ]

    public init(factory: any MetricsFactory) {
        self.factory = factory
        self.queueDepth = CoreMetrics.Gauge(label: "i2v_queue_depth", factory: factory)
        self.running = CoreMetrics.Gauge(label: "i2v_tasks_running", factory: factory)
        self.submitLatency = CoreMetrics.Timer(label: "i2v_submit_duration_seconds", factory: factory)
        self.stepLatency = CoreMetrics.Timer(label: "i2v_step_duration_seconds", factory: factory)
        self.inferenceLatency = CoreMetrics.Timer(label: "i2v_inference_duration_seconds", factory: factory)
        self.encodeLatency = CoreMetrics.Timer(label: "i2v_encode_duration_seconds", factory: factory)
        self.claimLatency = CoreMetrics.Timer(label: "i2v_claim_duration_seconds", factory: factory)
        self.intakeFetch = CoreMetrics.Timer(label: "i2v_intake_fetch_duration_seconds", factory: factory)
        self.intakeDecode = CoreMetrics.Timer(label: "i2v_intake_decode_duration_seconds", factory: factory)
        self.intakePNG = CoreMetrics.Timer(label: "i2v_intake_png_duration_seconds", factory: factory)
        self.queueWait = CoreMetrics.Timer(label: "i2v_queue_wait_seconds", factory: factory)
        self.openStreams = CoreMetrics.Meter(label: "i2v_streams_open", factory: factory)
    }

    private static let intakeBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15].map(Duration.seconds)

    /// One accepted submit's image fetch, decode + resize, and PNG encode, in seconds.
    package func recordIntake(fetch: Double, decode: Double, png: Double) {
        intakeFetch.recordSeconds(fetch)
        intakeDecode.recordSeconds(decode)
        intakePNG.recordSeconds(png)
    }

    /// A running task taken back from a node whose lease ran out, by what became of it.
    package func recordLeaseExpired(_ outcome: RequeueOutcome) {
        let label =
            switch outcome {
            case .requeued: "requeued"
            case .failed: "failed"
            case .cancelled: "cancelled"
            case .notRunning: "not_running"
            }
        CoreMetrics.Counter(label: "i2v_lease_expirations_total", dimensions: [("outcome", label)], factory: factory).increment()
    }

    package func recordOutcome(_ status: TaskStatus) {
        CoreMetrics.Counter(label: "i2v_task_outcomes_total", dimensions: [("status", status.rawValue)], factory: factory)
            .increment()
    }

    package func recordImageFailure(cause: String) {
        CoreMetrics.Counter(label: "i2v_image_failures_total", dimensions: [("cause", cause)], factory: factory).increment()
    }

    package func recordRejection(status: Int) {
        CoreMetrics.Counter(label: "i2v_submit_rejections_total", dimensions: [("status", String(status))], factory: factory)
            .increment()
    }

    /// A submit whose client went away before its body was in: no answer was given, and the server did
    /// nothing wrong, so it is counted apart from the statuses.
    package func recordClientClosedSubmit() {
        CoreMetrics.Counter(label: "i2v_submit_rejections_total", dimensions: [("status", "client_closed")], factory: factory)
            .increment()
    }

    package func recordWorkerRestart(index: Int, device: String) {
        workerRestarts(index: index, device: device).increment()
    }

    package func recordWorkerRunning(index: Int, device: String, count: Int) {
        workerRunning(index: index, device: device).record(count)
    }

    /// Puts a worker's series in the exposition at zero before anything happens to it.
    package func registerWorker(index: Int, device: String) {
        workerRestarts(index: index, device: device).increment(by: 0)
        workerRunning(index: index, device: device).record(0)
    }

    private func workerRestarts(index: Int, device: String) -> CoreMetrics.Counter {
        CoreMetrics.Counter(label: "i2v_worker_restarts_total", dimensions: [("worker", String(index)), ("device", device)], factory: factory)
    }

    private func workerRunning(index: Int, device: String) -> CoreMetrics.Gauge {
        CoreMetrics.Gauge(label: "i2v_worker_tasks_running", dimensions: [("worker", String(index)), ("device", device)], factory: factory)
    }

    package func updateQueue(_ counts: QueueCounts) {
        queueDepth.record(counts.queued)
        running.record(counts.running)
    }

    /// One webhook delivery attempt, by how it ended (`delivered`, `retry`, `refused`, `gave_up`).
    package func recordWebhookDelivery(_ outcome: WebhookDeliveryOutcome) {
        webhookDeliveries(outcome).increment()
    }

    /// Puts every outcome's series in the exposition at zero, and the pending gauge, on nodes that deliver.
    package func registerWebhookDeliveries() {
        for outcome in WebhookDeliveryOutcome.allCases { webhookDeliveries(outcome).increment(by: 0) }
        updateWebhookPending(0)
    }

    /// Webhook messages waiting for a (next) attempt, all nodes together (read from the store).
    package func updateWebhookPending(_ count: Int) {
        CoreMetrics.Gauge(label: "i2v_webhook_pending", factory: factory).record(count)
    }

    private func webhookDeliveries(_ outcome: WebhookDeliveryOutcome) -> CoreMetrics.Counter {
        CoreMetrics.Counter(label: "i2v_webhook_deliveries_total", dimensions: [("outcome", outcome.rawValue)], factory: factory)
    }

}
