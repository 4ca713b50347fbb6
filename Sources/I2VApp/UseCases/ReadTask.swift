/// One task as its owner sees it.
struct TaskView: Sendable {
    var task: TaskRecord
    /// 1 = next to run; set while the task is queued.
    var queuePosition: Int?
    /// Seconds until the video is expected; nil until there are step times to go by.
    var etaSeconds: Double?
}

/// Reads a task for its owner; another key's task reads as missing.
struct ReadTask: Sendable {
    let store: any TaskStore & TaskListing
    /// Where set, a waiting or running task's view carries its ETA.
    var estimate: EstimateETA?

    func callAsFunction(id: String, owner: String?) async throws -> TaskView? {
        guard let listed = try await store.listedTask(id: id), listed.task.ownerKeyHash == owner else { return nil }
        let task = listed.task
        var view = TaskView(task: task, queuePosition: listed.queuePosition)
        if !task.status.isTerminal, let estimate { view.etaSeconds = await estimate(view) }
        return view
    }
}
