/// One task as its owner sees it.
struct TaskView: Sendable {
    var task: TaskRecord
    /// 1 = next to run; set while the task is queued.
    var queuePosition: Int?
}

/// Reads a task for its owner; another key's task reads as missing.
struct ReadTask: Sendable {
    let store: any TaskStore

    func callAsFunction(id: String, owner: String?) async throws -> TaskView? {
        guard let task = try await store.task(id: id), task.ownerKeyHash == owner else { return nil }
        let position = task.status == .inQueue ? try await store.queuePosition(id: id) : nil
        return TaskView(task: task, queuePosition: position)
    }
}
