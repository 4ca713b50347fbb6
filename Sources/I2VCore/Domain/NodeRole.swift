/// What a node runs: `serve` is one node doing everything; several `api` and `worker` nodes share one
/// PostgreSQL queue and one data dir.
public enum NodeRole: String, Sendable, CaseIterable {
    case serve
    /// HTTP only: no model, no worker.
    case api
    /// Inference workers only, with /health, /ready, /metrics and /models for its operators.
    case worker

    public var runsAPI: Bool { self != .worker }
    public var runsWorkers: Bool { self != .api }
}
