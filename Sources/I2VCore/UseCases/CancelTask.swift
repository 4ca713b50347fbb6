import Logging

/// What a cancel request came to.
package enum CancelResult: Sendable, Equatable {
    /// The task is cancelled (a queued one at once) or will end Cancelled (a running one): either way it
    /// ends `Cancelled`, whatever the worker was doing when the request arrived.
    case accepted
    /// It had already ended this way; nothing changed.
    case alreadyEnded(TaskStatus)
    case notFound
}

/// Cancels a task for its owner. The request is recorded in the store, the one place every node reads:
/// the dispatcher running the task learns of it there.
package struct CancelTask: Sendable {
    package let store: any TaskQueue
    package let media: MediaStore
    package let queueChanged: DispatchSignal
    package let metrics: ServiceMetrics

    package func callAsFunction(id: String, owner: String, logger: Logger) async throws -> CancelResult {
        switch try await store.cancel(id: id, ownerKeyHash: owner) {
        case .cancelledQueued:
            logger.info("queued task cancelled")
            metrics.recordOutcome(.cancelled)
            media.removeInput(key: MediaStore.inputKey(taskID: id))
            queueChanged.wake()
            return .accepted
        case .cancelRequested:
            logger.info("cancel requested for running task")
            queueChanged.wake()
            return .accepted
        case .alreadyCancelled:
            return .accepted
        case .alreadyFinished(let status):
            return .alreadyEnded(status)
        case .notFound:
            return .notFound
        }
    }

    package init(store: any TaskQueue, media: MediaStore, queueChanged: DispatchSignal, metrics: ServiceMetrics) {
        self.store = store
        self.media = media
        self.queueChanged = queueChanged
        self.metrics = metrics
    }
}
