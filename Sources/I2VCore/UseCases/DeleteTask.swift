import Logging

/// What a delete request came to.
package enum DeleteResult: Sendable, Equatable {
    /// The task is gone for its owner: a queued one never runs, a running one stops at its next step.
    case deleted
    case notFound
}

/// Deletes a task for its owner, whatever its state, with its files. A running task is cancelled through
/// the store (as `CancelTask` does), so the node running it stops it and discards anything it makes.
package struct DeleteTask: Sendable {
    package let store: any TaskListing
    package let media: MediaStore
    package let queueChanged: DispatchSignal
    package let metrics: ServiceMetrics
    /// Where the store keeps a webhook outbox: a task's webhook still hears of its end (a queued task is
    /// cancelled first, and its cancelled event recorded, in one transaction) before the row goes.
    package var webhooks: WebhookDeletionHook? = nil

    package func callAsFunction(id: String, owner: String, logger: Logger) async throws -> DeleteResult {
        let settled = try await webhooks?.settle(id: id, owner: owner)
        switch try await store.deleteTask(id: id, ownerKeyHash: owner) {
        case .removed(let task):
            if task.status == .inQueue || settled == .recorded(cancelledQueued: true) {
                logger.info("queued task deleted")
                metrics.recordOutcome(.cancelled)
                queueChanged.wake()
            }
            if let video = task.result?.videoName { media.removeVideo(name: video) }
            media.removeInput(key: task.inputKey)
            return .deleted
        case .stopping:
            logger.info("running task deleted; it stops at its next step")
            queueChanged.wake()
            return .deleted
        case .notFound:
            return .notFound
        }
    }

    package init(store: any TaskListing, media: MediaStore, queueChanged: DispatchSignal, metrics: ServiceMetrics, webhooks: WebhookDeletionHook? = nil) {
        self.store = store
        self.media = media
        self.queueChanged = queueChanged
        self.metrics = metrics
        self.webhooks = webhooks
    }
}
