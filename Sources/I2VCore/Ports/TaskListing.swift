import Foundation

/// Which way a listing runs, by submission order.
public enum TaskListOrder: String, Sendable, Equatable {
    case ascending = "asc"
    case descending = "desc"
}

/// One task of a listing, with its place in the queue while it waits (1 = next).
public struct ListedTask: Sendable, Equatable {
    public var task: TaskRecord
    public var queuePosition: Int?

    package init(task: TaskRecord, queuePosition: Int? = nil) {
        self.task = task
        self.queuePosition = queuePosition
    }
}

/// One task as a status poll reads it: the row and, while the task waits, its `seq` (submission order,
/// the order claims follow), by which `QueuePositions` finds its place without counting the queue.
public struct PolledTask: Sendable, Equatable {
    public var task: TaskRecord
    public var queueSeq: Int64?

    package init(task: TaskRecord, queueSeq: Int64? = nil) {
        self.task = task
        self.queueSeq = queueSeq
    }
}

public enum TaskListingResult: Sendable, Equatable {
    /// Up to `limit` tasks after the cursor; `hasMore` when further ones follow.
    case page([ListedTask], hasMore: Bool)
    /// The cursor names no task of this owner (never one, or deleted since).
    case unknownCursor
}

public enum TaskDeletionOutcome: Sendable, Equatable {
    /// The row is gone; the caller removes the task's files.
    case removed(TaskRecord)
    /// The task was running: its cancel is recorded and it no longer belongs to any key, so it is gone for
    /// its owner at once, while the node running it still sees the cancel and records its end. The row
    /// then waits for the retention sweep like any ended task; nobody can read it any more.
    case stopping(TaskRecord)
    case notFound
}

/// What an owner does with its tasks beyond the seed's reads: pages through them, and deletes them.
/// Every store implements it next to `TaskStore`; each method is one transaction.
public protocol TaskListing: Sendable {
    /// The owner's tasks in submission order, `limit` at most, starting after the task `after` (its id).
    func listTasks(ownerKeyHash: String, after: String?, limit: Int, order: TaskListOrder) async throws -> TaskListingResult
    /// One task, with its `seq` while it is queued: what a status poll reads (one primary-key lookup).
    func polledTask(id: String) async throws -> PolledTask?
    /// The `seq` of every queued task of `model` (all models when nil; compared without case), in claim order.
    func queueSeqs(model: String?) async throws -> [Int64]
    /// Deletes one of the owner's tasks: a queued or ended one at once, a running one as `stopping`.
    func deleteTask(id: String, ownerKeyHash: String) async throws -> TaskDeletionOutcome
}

package enum TaskListingOwner {
    /// The owner of a deleted task that is still stopping: API key hashes are 64 hex digits, so no key
    /// ever matches it.
    package static let none = ""
}

extension TaskListing {
    /// The `seq` of every queued task, in claim order.
    public func queueSeqs() async throws -> [Int64] { try await queueSeqs(model: nil) }
}
