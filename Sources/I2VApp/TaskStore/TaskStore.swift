import Foundation

public struct QueueFullError: Error, Sendable {
    public var queued: Int
}

/// Durable state of every task. The dispatcher, the use cases and the sweeper all go through it, so a
/// restart rebuilds everything from here. Each method is one transaction.
public protocol TaskStore: Sendable {
    /// Adds a queued task unless `maxQueued` tasks are already waiting (checked in the same transaction).
    func enqueue(_ task: TaskRecord, maxQueued: Int) async throws
    func task(id: String) async throws -> TaskRecord?
    /// 1 = next to run; nil when the task is not queued.
    func queuePosition(id: String) async throws -> Int?
    func counts() async throws -> QueueCounts
    /// Moves the oldest queued task to InProgress (FIFO) and counts the attempt.
    func claimNext() async throws -> TaskRecord?
    func recordProgress(id: String, step: Int, total: Int) async throws
    /// Ends a running task. A success for a task whose cancel was already acknowledged ends it Cancelled.
    @discardableResult
    func finish(id: String, outcome: TaskOutcome) async throws -> FinishOutcome
    func cancel(id: String, ownerKeyHash: String) async throws -> CancelOutcome
    /// Which of these running tasks their clients asked to cancel: how a cancel reaches the dispatcher
    /// running the task.
    func cancelRequested(among ids: [String]) async throws -> Set<String>
    /// Puts a running task back in the queue (front of it, by age) unless it ran `maxAttempts` times.
    func requeue(id: String, maxAttempts: Int, reason: String, countAttempt: Bool) async throws -> RequeueOutcome
    /// After a crash: every InProgress task is requeued once more or failed. Returns the ids touched.
    func recoverInterrupted(maxAttempts: Int) async throws -> [String: RequeueOutcome]
    /// Succeeded tasks whose video is older than `before` and not yet marked expired.
    func tasksWithVideosFinished(before: Date) async throws -> [TaskRecord]
    func markVideoExpired(id: String) async throws
    /// Deletes terminal tasks that finished before `before`; returns them so their files can go too.
    func deleteTasks(finishedBefore: Date) async throws -> [TaskRecord]
    /// Every file name (inputs and videos) a live task still refers to, for the orphan sweep.
    func referencedFileNames() async throws -> Set<String>
    func ping() async throws
}
