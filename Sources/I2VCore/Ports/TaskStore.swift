import Foundation

public struct QueueFullError: Error, Sendable {
    public var queued: Int

    package init(queued: Int) {
        self.queued = queued
    }
}

/// The store could not be reached (or did not answer in time). Nothing was changed by the call that threw
/// it, so the caller may retry; the API answers 503 with this reason.
public struct StoreUnavailable: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "the task database is unavailable: \(reason)" }
}

/// Durable state of every task, cut into the ports its users need: the queue with its leases (dispatcher,
/// reaper, use cases), result retention (sweeper), the node registry (heartbeats, live-node readers), the
/// submit guards (rate buckets, idempotency keys) and job statistics (estimates). A store adapter serves
/// all of them over one database, so a restart rebuilds everything from there. Each method is one
/// transaction.
public typealias TaskStore = TaskQueue & ResultRetention & NodeRegistry & SubmitGuards & JobStatistics

/// The queue and its leases. Several nodes may share one store. A node claims a task under its name with a
/// lease; only the node holding the lease may record the task's progress and end, and its heartbeat
/// (`renewLeases`) keeps the lease alive. A lease that runs out means the node is gone: any node's
/// `requeueExpiredLeases` then puts the task back in the queue (or fails it once it has used its attempts).
/// Every decision about a task's state is `TaskStateMachine`'s; an adapter reads, applies and notifies.
public protocol TaskQueue: Sendable {
    /// Adds a queued task unless `maxQueued` tasks are already waiting (checked in the same transaction).
    func enqueue(_ task: TaskRecord, maxQueued: Int) async throws
    func task(id: String) async throws -> TaskRecord?
    /// 1 = next to run; nil when the task is not queued.
    func queuePosition(id: String) async throws -> Int?
    func counts() async throws -> QueueCounts
    /// Moves the oldest queued task of one of `models` (any model when nil; ids compared without case) to
    /// InProgress under `node`'s lease and counts the attempt. Each model's tasks are FIFO on their own, so a
    /// long queue for one model never holds up a node serving another. With `loraSet`, only tasks of that
    /// LoRA set (`TaskLoRA.setKey`) are taken: a worker that runs one set keeps to it while it is busy.
    func claimNext(node: String, lease: Duration, models: [String]?, loraSet: String?) async throws -> TaskRecord?
    /// The node's heartbeat: extends its leases on these tasks and returns the ones it still holds.
    func renewLeases(node: String, ids: [String], lease: Duration) async throws -> Set<String>
    func recordProgress(id: String, node: String, step: Int, total: Int) async throws
    /// Ends a running task. A success for a task whose cancel was already acknowledged ends it Cancelled.
    @discardableResult
    func finish(id: String, node: String, outcome: TaskOutcome) async throws -> FinishOutcome
    func cancel(id: String, ownerKeyHash: String) async throws -> CancelOutcome
    /// Which of these running tasks their clients asked to cancel: how a cancel reaches the dispatcher
    /// running the task.
    func cancelRequested(among ids: [String]) async throws -> Set<String>
    /// Puts a running task back in the queue (front of it, by age) unless it ran `maxAttempts` times.
    func requeue(id: String, node: String, maxAttempts: Int, reason: String, countAttempt: Bool) async throws -> RequeueOutcome
    /// At a node's start: the tasks it held when it last stopped (its name is stable across restarts) are
    /// requeued once more or failed, without waiting for their leases to run out.
    func recoverInterrupted(node: String, maxAttempts: Int) async throws -> [String: RequeueOutcome]
    /// Any node, now and then: running tasks whose lease ran out before `now` are requeued or failed.
    func requeueExpiredLeases(maxAttempts: Int, now: Date) async throws -> [String: RequeueOutcome]
    func ping() async throws
}

extension TaskQueue {
    /// The oldest queued task of any model.
    public func claimNext(node: String, lease: Duration) async throws -> TaskRecord? {
        try await claimNext(node: node, lease: lease, models: nil, loraSet: nil)
    }

    public func claimNext(node: String, lease: Duration, models: [String]?) async throws -> TaskRecord? {
        try await claimNext(node: node, lease: lease, models: models, loraSet: nil)
    }
}

/// What the result sweeper needs: old videos and old tasks, and the files live tasks still use.
public protocol ResultRetention: Sendable {
    /// Succeeded tasks whose video is older than `before` and not yet marked expired.
    func tasksWithVideosFinished(before: Date) async throws -> [TaskRecord]
    /// Marks the video expired; false when another node's sweeper already did (so only one logs it).
    @discardableResult
    func markVideoExpired(id: String) async throws -> Bool
    /// Deletes terminal tasks that finished before `before`; returns them so their files can go too. With
    /// several sweepers at once, each row is returned to exactly one of them.
    func deleteTasks(finishedBefore: Date) async throws -> [TaskRecord]
    /// Every file name (inputs and videos) a live task still refers to, for the orphan sweep.
    func referencedFileNames() async throws -> Set<String>
}

/// Worker nodes and what they serve. Written by each worker node's heartbeat; read through `LiveNodes`.
public protocol NodeRegistry: Sendable {
    /// A worker node's heartbeat: its registration is written or replaced. Registrations not heard from
    /// for a day are dropped on the way.
    func recordHeartbeat(_ node: WorkerNode) async throws
    /// Every registered worker node, the most recently heard first; whether one is alive is the caller's
    /// judgement (`WorkerNode.isLive`).
    func workerNodes() async throws -> [WorkerNode]
    /// A node that stops cleanly leaves at once rather than when its heartbeat goes stale.
    func removeWorkerNode(id: String) async throws
}

/// What a submit checks before it queues anything: the key's rate and its idempotency keys. Kept in the
/// store so that every API node sharing it counts the same submits.
public protocol SubmitGuards: Sendable {
    /// Takes one submit from the key's token bucket (`perMinute` submits, refilled evenly). nil when the
    /// submit may go ahead; otherwise the seconds until the next token.
    func takeSubmitToken(owner: String, perMinute: Int, now: Date) async throws -> Int?
    /// Reserves the owner's idempotency key for a submit that will create `taskID`, unless the key was
    /// used since `validAfter`; then the earlier use is returned. Keys older than `validAfter` go.
    func reserveIdempotencyKey(_ key: IdempotencyKey, taskID: String, validAfter: Date, now: Date) async throws -> IdempotencyReservation
    /// The reserved submit queued its task: from now on the key answers with it, however long that takes.
    func completeIdempotencyKey(_ key: IdempotencyKey, taskID: String) async throws
    /// The reserved submit failed (or its reservation was abandoned): the key is free for the next try.
    func releaseIdempotencyKey(_ key: IdempotencyKey, taskID: String) async throws
}

/// Measured job costs and the work still running, for estimates.
public protocol JobStatistics: Sendable {
    /// How long the most recent successful jobs of this size and frame count took per denoising step and to
    /// encode (the last `JobProfile.sampleSize`); nil before the first.
    func jobProfile(width: Int, height: Int, frames: Int) async throws -> JobProfile?
    /// The denoising steps each running task has left.
    func runningWork() async throws -> [RemainingWork]
}

/// Measured costs of a kind of job, for estimates.
public struct JobProfile: Sendable, Equatable {
    public static let sampleSize = 20
    public var secondsPerStep: Double
    public var encodeSeconds: Double

    package init(secondsPerStep: Double, encodeSeconds: Double) {
        self.secondsPerStep = secondsPerStep
        self.encodeSeconds = encodeSeconds
    }
}

/// A running task's size and the steps it has left.
public struct RemainingWork: Sendable, Equatable {
    public var width: Int
    public var height: Int
    public var frames: Int
    public var steps: Int

    package init(width: Int, height: Int, frames: Int, steps: Int) {
        self.width = width
        self.height = height
        self.frames = frames
        self.steps = steps
    }
}

/// A client's `Idempotency-Key` as the store keeps it: per API key, with a fingerprint of what was asked.
public struct IdempotencyKey: Sendable, Equatable {
    public var owner: String
    public var key: String
    public var requestHash: String

    public init(owner: String, key: String, requestHash: String) {
        self.owner = owner
        self.key = key
        self.requestHash = requestHash
    }
}

public enum IdempotencyReservation: Sendable, Equatable {
    /// The key is this submit's: it goes ahead and creates the task.
    case reserved
    /// An earlier submit holds the key: its task id, its request's fingerprint, whether its task was
    /// queued yet, and when it took the key.
    case taken(taskID: String, requestHash: String, queued: Bool, since: Date)
}

/// The registry's columns, encoded alike by both stores.
package enum WorkerNodeColumns {
    package static let staleAfter: TimeInterval = 86_400

    package static func encodeModels(_ models: [ServedModel]) throws -> String {
        String(decoding: try JSONEncoder().encode(models), as: UTF8.self)
    }

    package static func decodeModels(_ text: String) throws -> [ServedModel] {
        try JSONDecoder().decode([ServedModel].self, from: Data(text.utf8))
    }

    /// Devices never hold a comma (it separates workers in `I2V_DEVICES`), so a node's list is one text.
    package static func encodeDevices(_ devices: [String]) -> String {
        devices.joined(separator: ",")
    }

    /// Rows from before devices were recorded have none.
    package static func decodeDevices(_ text: String?) -> [String] {
        (text ?? "").split(separator: ",").map(String.init)
    }
}

/// Reasons the stores record when they take a task from a node, worded alike whichever store it is.
package enum TaskStoreReasons {
    package static let interrupted = "the node running it stopped while the task was running"

    package static func leaseExpired(node: String?) -> String {
        guard let node else { return "the node running it stopped while the task was running" }
        return "node \(node) stopped renewing its lease on the task"
    }
}

/// The token bucket arithmetic both stores apply inside their transaction.
package struct SubmitBucket {
    package var tokens: Double
    package var updatedAt: Double

    /// Refills to `now`, then takes a token if there is one: the new state, and nil or the seconds to wait.
    package static func take(_ bucket: SubmitBucket?, perMinute: Int, now: Double) -> (SubmitBucket, retryAfter: Int?) {
        let capacity = Double(perMinute)
        let perSecond = capacity / 60
        var bucket = bucket ?? SubmitBucket(tokens: capacity, updatedAt: now)
        bucket.tokens = min(capacity, bucket.tokens + max(0, now - bucket.updatedAt) * perSecond)
        bucket.updatedAt = now
        guard bucket.tokens >= 1 else { return (bucket, Int(((1 - bucket.tokens) / perSecond).rounded(.up))) }
        bucket.tokens -= 1
        return (bucket, nil)
    }

    package init(tokens: Double, updatedAt: Double) {
        self.tokens = tokens
        self.updatedAt = updatedAt
    }
}
