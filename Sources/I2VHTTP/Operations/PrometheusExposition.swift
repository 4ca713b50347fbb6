import I2VCore
import Metrics
import Prometheus

/// The Prometheus registry behind `/metrics`: every series the service records through `ServiceMetrics`
/// lands here. Each app (and each test) makes its own instead of using the process-global bootstrap.
public struct PrometheusExposition: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let metrics: ServiceMetrics

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = ServiceMetrics.durationBuckets
        self.metrics = ServiceMetrics(factory: factory)
    }

    /// The text exposition format.
    public func render() -> [UInt8] { registry.emitToBuffer() }
}
