/// One task as its owner sees it.
package struct TaskView: Sendable {
    package var task: TaskRecord
    /// 1 = next to run; set while the task is queued.
    package var queuePosition: Int?
    /// Seconds until the video is expected; nil until there are step times to go by.
    package var etaSeconds: Double?

    package init(task: TaskRecord, queuePosition: Int? = nil, etaSeconds: Double? = nil) {
        self.task = task
        self.queuePosition = queuePosition
        self.etaSeconds = etaSeconds
    }
}

/// Reads a task for its owner; another key's task reads as missing.
package struct ReadTask: Sendable {
    package let store: any TaskListing
    package let positions: QueuePositions
    /// Where set, a waiting or running task's view carries its ETA.
    package var estimate: EstimateETA?

    package init(store: any TaskQueue & TaskListing, positions: QueuePositions? = nil, estimate: EstimateETA? = nil) {
        self.store = store
        self.positions = positions ?? QueuePositions(store: store)
        self.estimate = estimate
    }

    package func callAsFunction(id: String, owner: String?) async throws -> TaskView? {
        guard var polled = try await store.polledTask(id: id), polled.task.ownerKeyHash == owner else { return nil }
        var position: Int?
        if let seq = polled.queueSeq {
            position = try await positions.position(of: id, seq: seq, model: polled.task.parameters.model)
            if position == nil {
                // Claimed or cancelled between the two reads: read it again, so a queued task always has a
                // place and a status never lags its position.
                guard let again = try await store.polledTask(id: id) else { return nil }
                polled = again
            }
        }
        let task = polled.task
        var view = TaskView(task: task, queuePosition: position)
        if !task.status.isTerminal, let estimate { view.etaSeconds = await estimate(view) }
        return view
    }
}
