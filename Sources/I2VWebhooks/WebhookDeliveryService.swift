import Foundation
import I2VCore
import ImageIntake
import Logging
import ServiceLifecycle
import Synchronization

/// Delivers the webhook outbox, on every node that serves the API. Each tick, in its own service so a slow or
/// dead receiver never holds a submit or the scheduler:
/// 1. records the events that happened since the last tick (one store transaction, see `WebhookOutbox`);
/// 2. claims as many due messages as it has free slots (`concurrency`) and sends each in a child task;
/// 3. records each attempt's end: delivered, the next attempt's time, or given up.
/// A claim lasts the attempt's timeout and a margin, so a node that dies mid-delivery only delays the
/// message; several API nodes never send one message at once.
public struct WebhookDeliveryService: Service {
    package struct Configuration: Sendable {
        package var settings: WebhookSettings
        package var publicURL: String
        /// Delivered and given-up messages are kept this long (the task retention: they never go before their task).
        package var retention: Duration
        package var pruneInterval: Duration = .seconds(600)
        /// Tasks looked at per collection.
        package var collectBatch = 500

        package init(settings: WebhookSettings, publicURL: String, retention: Duration, pruneInterval: Duration = .seconds(600)) {
            self.settings = settings
            self.publicURL = publicURL
            self.retention = retention
            self.pruneInterval = pruneInterval
        }
    }

    package let outbox: any WebhookOutbox
    package let sender: WebhookSender
    package let configuration: Configuration
    package let wakeup: WebhookWakeup
    package let metrics: ServiceMetrics
    package let logger: Logger

    package init(outbox: any WebhookOutbox, sender: WebhookSender, configuration: Configuration, wakeup: WebhookWakeup, metrics: ServiceMetrics, logger: Logger)
    {
        self.outbox = outbox
        self.sender = sender
        self.configuration = configuration
        self.wakeup = wakeup
        self.metrics = metrics
        self.logger = logger
        metrics.registerWebhookDeliveries()
    }

    public func run() async throws {
        let inFlight = InFlightCount()
        let concurrency = configuration.settings.concurrency
        let claimSpan = configuration.settings.timeout + .seconds(30)
        var lastPrune: ContinuousClock.Instant?
        await withDiscardingTaskGroup { group in
            while !Task.isShuttingDownGracefully && !Task.isCancelled {
                await collect()
                let free = concurrency - inFlight.value
                if free > 0 {
                    do {
                        let claimed = try await outbox.claimWebhookMessages(limit: free, now: Date(), claim: claimSpan)
                        for message in claimed {
                            inFlight.add(1)
                            group.addTask {
                                await deliver(message)
                                inFlight.add(-1)
                                wakeup.wake()
                            }
                        }
                    } catch {
                        logger.debug("could not claim webhook deliveries", metadata: ["error": "\(error)"])
                    }
                }
                if let pending = try? await outbox.pendingWebhookMessageCount() { metrics.updateWebhookPending(pending) }
                if lastPrune.map({ ContinuousClock.now - $0 >= configuration.pruneInterval }) ?? true {
                    lastPrune = .now
                    await prune()
                }
                await cancelWhenGracefulShutdownOrWoken()
            }
        }
    }

    private func cancelWhenGracefulShutdownOrWoken() async {
        try? await cancelWhenGracefulShutdown { await wakeup.wait(upTo: configuration.settings.pollInterval) }
    }

    /// Records what happened since the last tick; a full batch is followed by another at once.
    package func collect(now: Date = Date()) async {
        let render = WebhookPayload.renderer(publicURL: configuration.publicURL)
        for _ in 0..<20 {
            do {
                let added = try await outbox.collectWebhookEvents(limit: configuration.collectBatch, now: now, render: render)
                for message in added {
                    logger.debug(
                        "webhook event recorded",
                        metadata: ["requestId": "\(message.taskID)", "event": "\(message.event.rawValue)", "webhook_id": "\(message.id)"])
                }
                if added.count < configuration.collectBatch { return }
            } catch {
                logger.debug("could not record webhook events", metadata: ["error": "\(error)"])
                return
            }
        }
    }

    package func deliver(_ message: WebhookMessage) async {
        var logger = logger
        logger[metadataKey: "requestId"] = "\(message.taskID)"
        logger[metadataKey: "webhook_id"] = "\(message.id)"
        let result = await sender.send(message, logger: logger)
        let now = Date()
        let record: WebhookAttemptRecord
        let outcome: WebhookDeliveryOutcome
        switch result {
        case .delivered(let status):
            record = .delivered(status: status)
            outcome = .delivered
        case .failed(let reason, let status):
            (record, outcome) = retryOrGiveUp(message, error: reason, status: status, now: now, retryOutcome: .retry)
        case .refused(let reason):
            (record, outcome) = retryOrGiveUp(message, error: reason, status: nil, now: now, retryOutcome: .refused)
        }
        metrics.recordWebhookDelivery(outcome)
        switch record {
        case .delivered(let status):
            logger.info("webhook delivered", metadata: ["event": "\(message.event.type)", "status": "\(status)", "attempt": "\(message.attempts)"])
        case .retry(let at, let error, _):
            logger.info(
                "webhook attempt failed; will retry",
                metadata: [
                    "event": "\(message.event.type)", "attempt": "\(message.attempts)", "error": "\(error)",
                    "retry_in_s": "\(Int(at.timeIntervalSince(now).rounded()))",
                ])
        case .gaveUp(let error, _):
            logger.warning("webhook given up", metadata: ["event": "\(message.event.type)", "attempts": "\(message.attempts)", "error": "\(error)"])
        }
        do {
            try await outbox.recordWebhookAttempt(id: message.id, attempt: message.attempts, outcome: record, now: now)
        } catch {
            // The claim runs out and the message is sent again: at least once, never lost.
            logger.warning("could not record a webhook attempt", metadata: ["error": "\(error)"])
        }
    }

    private func retryOrGiveUp(
        _ message: WebhookMessage,
        error: String,
        status: Int?,
        now: Date,
        retryOutcome: WebhookDeliveryOutcome
    ) -> (WebhookAttemptRecord, WebhookDeliveryOutcome) {
        guard let next = configuration.settings.retry.nextAttempt(afterAttempts: message.attempts, createdAt: message.createdAt, now: now) else {
            return (.gaveUp(error: error, status: status), .gaveUp)
        }
        return (.retry(at: next, error: error, status: status), retryOutcome)
    }

    private func prune() async {
        do {
            let pruned = try await outbox.pruneWebhookMessages(finishedBefore: Date().addingTimeInterval(-configuration.retention.seconds))
            if pruned > 0 { logger.debug("pruned webhook deliveries", metadata: ["count": "\(pruned)"]) }
        } catch {
            logger.debug("could not prune webhook deliveries", metadata: ["error": "\(error)"])
        }
    }
}

/// Deliveries in flight; the loop claims only as many messages as there are free slots.
private final class InFlightCount: Sendable {
    private let count = Mutex(0)
    var value: Int { count.withLock { $0 } }
    func add(_ delta: Int) { count.withLock { $0 += delta } }
}

/// Wakes the delivery loop before its poll: a delivery finished (a slot is free) or an event was recorded
/// outside it. Wake-ups coalesce; the loop re-reads the store each time.
package final class WebhookWakeup: Sendable {
    private struct State: ~Copyable {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())
    package init() {}

    package func wake() {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            guard let waiter = state.waiter else {
                state.pending = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    /// Returns on a wake-up (one that came while nobody waited counts), after `timeout`, or on cancellation.
    package func wait(upTo timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.next() }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }

    private func next() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.pending || Task.isCancelled {
                        state.pending = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }?.resume()
        }
    }
}
