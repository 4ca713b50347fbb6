import Foundation
import Logging
import ServiceLifecycle

/// Puts back in the queue (or fails, once it has used its attempts) every running task whose node stopped
/// renewing its lease: a node killed outright, or cut off from the database. Every node runs one, API
/// nodes included, so a task never stays InProgress because the node running it is gone, even when no
/// worker node is left. The store hands each expired task to exactly one reaper.
public struct LeaseReaper: Service {
    let store: any TaskStore
    let maxAttempts: Int
    let interval: Duration
    let queueChanged: DispatchSignal?
    let metrics: ServiceMetrics
    let logger: Logger

    public init(store: any TaskStore, maxAttempts: Int, interval: Duration, queueChanged: DispatchSignal?, metrics: ServiceMetrics, logger: Logger) {
        self.store = store
        self.maxAttempts = maxAttempts
        self.interval = interval
        self.queueChanged = queueChanged
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            await reap()
        }
    }

    public func reap(now: Date = Date()) async {
        let reaped: [String: RequeueOutcome]
        do {
            reaped = try await store.requeueExpiredLeases(maxAttempts: maxAttempts, now: now)
        } catch {
            // The dispatcher reports the store being away; one line a tick here would only repeat it.
            logger.debug("could not look for expired leases", metadata: ["error": "\(error)"])
            return
        }
        for (id, outcome) in reaped.sorted(by: { $0.key < $1.key }) {
            logger.warning("took back a task whose node stopped renewing its lease", metadata: ["requestId": "\(id)", "outcome": "\(outcome)"])
            metrics.recordLeaseExpired(outcome)
            switch outcome {
            case .failed: metrics.recordOutcome(.failed)
            case .cancelled: metrics.recordOutcome(.cancelled)
            case .requeued, .notRunning: break
            }
        }
        if !reaped.isEmpty { queueChanged?.wake() }
    }
}
