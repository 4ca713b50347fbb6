import Foundation
import Logging
import ServiceLifecycle

/// Puts back in the queue (or fails, once it has used its attempts) every running task whose node stopped
/// renewing its lease: a node killed outright, or cut off from the database. Every node runs one, API
/// nodes included, so a task never stays InProgress because the node running it is gone, even when no
/// worker node is left. The store hands each expired task to exactly one reaper.
///
/// A lease only shows its holder is gone to a reaper that could have seen the holder renew it. While the
/// store is away nobody can renew, so a lease that ran out during an outage says nothing about its holder:
/// after any call to the store fails, the reaper judges no lease until the store has answered it for one
/// whole lease in a row, time enough for every live holder's heartbeat to get through.
public struct LeaseReaper: Service {
    package let store: any TaskQueue
    package let maxAttempts: Int
    package let interval: Duration
    package let lease: Duration
    package let queueChanged: DispatchSignal?
    package let metrics: ServiceMetrics
    package let logger: Logger

    public init(
        store: any TaskQueue, maxAttempts: Int, interval: Duration, lease: Duration, queueChanged: DispatchSignal?,
        metrics: ServiceMetrics, logger: Logger
    ) {
        self.store = store
        self.maxAttempts = maxAttempts
        self.interval = interval
        self.lease = lease
        self.queueChanged = queueChanged
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        var watch = StoreWatch(lease: lease)
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            await tick(&watch)
        }
    }

    /// One look at the store: reaps only when the watch says the reaper has seen the store long enough.
    package func tick(_ watch: inout StoreWatch, now: ContinuousClock.Instant = .now) async {
        do {
            try await store.ping()
        } catch {
            watch.failed()
            logger.debug("could not reach the store to look for expired leases", metadata: ["error": "\(error)"])
            return
        }
        guard watch.answered(at: now) else { return }
        if !(await reap()) { watch.failed() }
    }

    /// Takes back the tasks whose lease ran out before `now`; false when the store could not be asked.
    @discardableResult
    public func reap(now: Date = Date()) async -> Bool {
        let reaped: [String: RequeueOutcome]
        do {
            reaped = try await store.requeueExpiredLeases(maxAttempts: maxAttempts, now: now)
        } catch {
            // The dispatcher reports the store being away; one line a tick here would only repeat it.
            logger.debug("could not look for expired leases", metadata: ["error": "\(error)"])
            return false
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
        return true
    }
}

/// How long a reaper has seen the store answer without a break. A reaper that just started has seen
/// nothing yet either: it waits one lease too, so a node that starts during (or right after) an outage
/// does not take back the tasks of holders that are still alive.
package struct StoreWatch: Sendable {
    package let lease: Duration
    private(set) var answeringSince: ContinuousClock.Instant?

    package init(lease: Duration) { self.lease = lease }

    package mutating func failed() { answeringSince = nil }

    /// Records an answer; true once the answers have gone on for a whole lease.
    package mutating func answered(at now: ContinuousClock.Instant) -> Bool {
        guard let since = answeringSince else {
            answeringSince = now
            return false
        }
        return now - since >= lease
    }
}
