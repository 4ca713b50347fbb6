import CoreMetrics
import Metrics
import Prometheus

/// The service's own metrics, made through swift-metrics with an explicit Prometheus factory so each app
/// (and each test) has its own registry instead of the process-global one.
public struct ServiceMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory

    let queueDepth: CoreMetrics.Gauge
    let running: CoreMetrics.Gauge
    let submitLatency: CoreMetrics.Timer
    let stepLatency: CoreMetrics.Timer
    let inferenceLatency: CoreMetrics.Timer
    let encodeLatency: CoreMetrics.Timer

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            "i2v_submit_duration_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20].map(Duration.seconds),
            "i2v_step_duration_seconds": [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40].map(Duration.seconds),
            "i2v_inference_duration_seconds": [1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 2400].map(Duration.seconds),
            "i2v_encode_duration_seconds": [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30].map(Duration.seconds),
        ]
        self.factory = factory
        self.queueDepth = CoreMetrics.Gauge(label: "i2v_queue_depth", factory: factory)
        self.running = CoreMetrics.Gauge(label: "i2v_tasks_running", factory: factory)
        self.submitLatency = CoreMetrics.Timer(label: "i2v_submit_duration_seconds", factory: factory)
        self.stepLatency = CoreMetrics.Timer(label: "i2v_step_duration_seconds", factory: factory)
        self.inferenceLatency = CoreMetrics.Timer(label: "i2v_inference_duration_seconds", factory: factory)
        self.encodeLatency = CoreMetrics.Timer(label: "i2v_encode_duration_seconds", factory: factory)
    }

    func recordOutcome(_ status: TaskStatus) {
        CoreMetrics.Counter(label: "i2v_task_outcomes_total", dimensions: [("status", status.rawValue)], factory: factory)
            .increment()
    }

    func recordImageFailure(cause: String) {
        CoreMetrics.Counter(label: "i2v_image_failures_total", dimensions: [("cause", cause)], factory: factory).increment()
    }

    func recordRejection(status: Int) {
        CoreMetrics.Counter(label: "i2v_submit_rejections_total", dimensions: [("status", String(status))], factory: factory)
            .increment()
    }

    func recordWorkerRestart(index: Int, device: String) {
        workerRestarts(index: index, device: device).increment()
    }

    func recordWorkerRunning(index: Int, device: String, count: Int) {
        workerRunning(index: index, device: device).record(count)
    }

    /// Puts a worker's series in the exposition at zero before anything happens to it.
    func registerWorker(index: Int, device: String) {
        workerRestarts(index: index, device: device).increment(by: 0)
        workerRunning(index: index, device: device).record(0)
    }

    private func workerRestarts(index: Int, device: String) -> CoreMetrics.Counter {
        CoreMetrics.Counter(label: "i2v_worker_restarts_total", dimensions: [("worker", String(index)), ("device", device)], factory: factory)
    }

    private func workerRunning(index: Int, device: String) -> CoreMetrics.Gauge {
        CoreMetrics.Gauge(label: "i2v_worker_tasks_running", dimensions: [("worker", String(index)), ("device", device)], factory: factory)
    }

    func updateQueue(_ counts: QueueCounts) {
        queueDepth.record(counts.queued)
        running.record(counts.running)
    }

    public func exposition() -> [UInt8] { registry.emitToBuffer() }
}
