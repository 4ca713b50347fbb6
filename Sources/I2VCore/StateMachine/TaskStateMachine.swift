import Foundation

/// A task's lifecycle columns: what the transitions read and write. Everything else in the row (what was
/// asked, the input, the timings) is written once at submit and never changes.
package struct TaskState: Sendable, Equatable {
    package var status: TaskStatus
    package var owner: String
    package var attempts: Int
    package var cancelRequested: Bool
    /// The node holding the task: while it runs, the holder of its lease; once the task is back in the
    /// queue, the holder of the attempt that was taken from it, until another node claims it. That
    /// attempt may still be running (its node was cut off, not gone), and its result is still wanted.
    package var holder: String?
    package var leaseExpiresAt: Date?
    package var startedAt: Date?
    package var finishedAt: Date?
    package var reason: String?
    package var progressStep: Int?
    package var progressTotal: Int?
    package var videoExpired: Bool

    package init(
        status: TaskStatus, owner: String, attempts: Int = 0, cancelRequested: Bool = false, holder: String? = nil,
        leaseExpiresAt: Date? = nil, startedAt: Date? = nil, finishedAt: Date? = nil, reason: String? = nil,
        progressStep: Int? = nil, progressTotal: Int? = nil, videoExpired: Bool = false
    ) {
        self.status = status
        self.owner = owner
        self.attempts = attempts
        self.cancelRequested = cancelRequested
        self.holder = holder
        self.leaseExpiresAt = leaseExpiresAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.reason = reason
        self.progressStep = progressStep
        self.progressTotal = progressTotal
        self.videoExpired = videoExpired
    }

    /// Running under `node`'s lease.
    package func isRunning(under node: String) -> Bool { status == .inProgress && holder == node }

    /// Back in the queue with `node`'s attempt not yet replaced by another node's claim.
    package func isQueuedAfterAttempt(of node: String) -> Bool { status == .inQueue && holder == node }

    /// Ends the task: no holder, no lease, no progress.
    fileprivate func ended(_ status: TaskStatus, reason: String?, now: Date) -> TaskState {
        var next = self
        next.status = status
        next.reason = reason
        next.finishedAt = now
        next.holder = nil
        next.leaseExpiresAt = nil
        next.progressStep = nil
        next.progressTotal = nil
        return next
    }
}

/// What a store does with the row after a transition.
package enum TaskChange: Sendable, Equatable {
    /// Nothing to write.
    case none
    /// Write these lifecycle columns, and the result's columns when there is one.
    case update(TaskState, result: TaskResult? = nil)
    /// Delete the row.
    case delete
}

/// What must follow a transition once its transaction commits: a store that serves several nodes tells
/// them (PostgreSQL: NOTIFY); a store of one node has nobody else to tell.
package enum TaskEffect: Sendable, Hashable {
    /// A task entered the queue: dispatchers look for work.
    case taskQueued
    /// A running task is to stop: the dispatcher running it reads the cancel now rather than at its next tick.
    case stopRequested
}

/// One transition's decision: its answer to the caller, the row change and the effects.
package struct TaskPlan<Outcome: Sendable & Equatable>: Sendable, Equatable {
    package var outcome: Outcome
    package var change: TaskChange
    package var effects: Set<TaskEffect>

    package init(_ outcome: Outcome, _ change: TaskChange = .none, effects: Set<TaskEffect> = []) {
        self.outcome = outcome
        self.change = change
        self.effects = effects
    }
}

/// The task state machine: every decision on a task's lifecycle, as pure functions from the row's current
/// state and the request to a plan. The stores read the row, apply the plan in the same transaction and
/// emit its effects; they decide nothing themselves, so every store behaves alike.
package enum TaskStateMachine {
    package static let cancelledByClient = "cancelled by the client"

    /// A node takes a queued task: its attempt is counted and its lease starts.
    package static func claim(_ state: TaskState, node: String, leaseUntil: Date, totalSteps: Int, now: Date) -> TaskPlan<Bool> {
        guard state.status == .inQueue else { return TaskPlan(false) }
        var next = state
        next.status = .inProgress
        next.attempts += 1
        next.startedAt = now
        next.progressStep = 0
        next.progressTotal = totalSteps
        next.reason = nil
        next.holder = node
        next.leaseExpiresAt = leaseUntil
        return TaskPlan(true, .update(next))
    }

    /// A node's heartbeat on a task it runs: true while it holds it. A task taken back from the node while
    /// it could not reach the store, and not claimed by anyone since, is its own again: its job never
    /// stopped, so running it anywhere else would only do the work twice.
    package static func renew(_ state: TaskState, node: String, leaseUntil: Date, now: Date) -> TaskPlan<Bool> {
        var next = state
        if state.isRunning(under: node) {
            next.leaseExpiresAt = leaseUntil
            return TaskPlan(true, .update(next))
        }
        guard state.isQueuedAfterAttempt(of: node) else { return TaskPlan(false) }
        next.status = .inProgress
        next.leaseExpiresAt = leaseUntil
        next.startedAt = next.startedAt ?? now
        next.reason = nil
        return TaskPlan(true, .update(next))
    }

    package static func progress(_ state: TaskState, node: String, step: Int, total: Int) -> TaskPlan<Bool> {
        guard state.isRunning(under: node) else { return TaskPlan(false) }
        var next = state
        next.progressStep = step
        next.progressTotal = total
        return TaskPlan(true, .update(next))
    }

    /// How a job ended, from the node that ran it. A success for a task whose cancel was acknowledged ends
    /// it Cancelled (the acknowledgement promised that). A success that arrives after the task was taken
    /// back from its node, before anyone else claimed it, is recorded: the video is what was asked for. A
    /// failure in that case is not: the task's next attempt is still to come.
    package static func finish(_ state: TaskState, node: String, outcome: TaskOutcome, now: Date) -> TaskPlan<FinishOutcome> {
        let late = state.isQueuedAfterAttempt(of: node)
        guard state.isRunning(under: node) || late else { return TaskPlan(.notRunning) }
        if late, case .succeeded = outcome {} else if late { return TaskPlan(.notRunning) }
        switch outcome {
        case .succeeded where state.cancelRequested:
            return TaskPlan(.ended(.cancelled), .update(state.ended(.cancelled, reason: cancelledByClient, now: now)))
        case .succeeded(let result):
            var next = state.ended(.succeed, reason: nil, now: now)
            next.startedAt = state.startedAt ?? now
            return TaskPlan(.ended(.succeed), .update(next, result: result))
        case .failed(let reason):
            return TaskPlan(.ended(.failed), .update(state.ended(.failed, reason: reason, now: now)))
        case .cancelled(let reason):
            return TaskPlan(.ended(.cancelled), .update(state.ended(.cancelled, reason: reason, now: now)))
        }
    }

    /// A client's cancel: a queued task ends at once; a running one is marked, and its node told.
    package static func cancel(_ state: TaskState?, owner: String, now: Date) -> TaskPlan<CancelOutcome> {
        guard let state, state.owner == owner else { return TaskPlan(.notFound) }
        switch state.status {
        case .inQueue:
            var next = state.ended(.cancelled, reason: cancelledByClient, now: now)
            next.cancelRequested = true
            return TaskPlan(.cancelledQueued, .update(next))
        case .inProgress:
            var next = state
            next.cancelRequested = true
            return TaskPlan(.cancelRequested, .update(next), effects: [.stopRequested])
        case .cancelled:
            return TaskPlan(.alreadyCancelled)
        case .succeed, .failed:
            return TaskPlan(.alreadyFinished(state.status))
        }
    }

    /// Takes a running task from its node: back to the queue (the front, by age), or failed once it has
    /// used its attempts, or cancelled if its client asked for that. `countAttempt` false gives the attempt
    /// back (the node stopped it for reasons of its own, such as a shutdown). The node stays recorded as
    /// the task's holder until another claims it, so a result it still sends is not lost.
    package static func requeue(
        _ state: TaskState, maxAttempts: Int, reason: String, countAttempt: Bool, now: Date
    ) -> TaskPlan<RequeueOutcome> {
        guard state.status == .inProgress else { return TaskPlan(.notRunning) }
        if state.cancelRequested {
            // The client asked for it to stop; putting it back would run it against their will.
            return TaskPlan(.cancelled, .update(state.ended(.cancelled, reason: cancelledByClient, now: now)))
        }
        if countAttempt && state.attempts >= maxAttempts {
            let failure = "\(reason); gave up after \(state.attempts) attempt\(state.attempts == 1 ? "" : "s")"
            return TaskPlan(.failed(reason: failure), .update(state.ended(.failed, reason: failure, now: now)))
        }
        var next = state
        next.status = .inQueue
        next.startedAt = nil
        next.progressStep = nil
        next.progressTotal = nil
        next.leaseExpiresAt = nil
        if !countAttempt { next.attempts -= 1 }
        return TaskPlan(.requeued, .update(next), effects: [.taskQueued])
    }

    /// A node gives a task back: only the node holding it may.
    package static func requeue(
        _ state: TaskState, node: String, maxAttempts: Int, reason: String, countAttempt: Bool, now: Date
    ) -> TaskPlan<RequeueOutcome> {
        guard state.isRunning(under: node) else { return TaskPlan(.notRunning) }
        return requeue(state, maxAttempts: maxAttempts, reason: reason, countAttempt: countAttempt, now: now)
    }

    /// Whether a running task's lease ran out by `now` (a task without one was running before leases
    /// existed: its node is long gone).
    package static func leaseExpired(_ state: TaskState, now: Date) -> Bool {
        state.status == .inProgress && (state.leaseExpiresAt.map { $0 < now } ?? true)
    }

    /// Lease expiry, as a reaper finds it: the task is taken from its node and counts the attempt.
    package static func expireLease(_ state: TaskState, maxAttempts: Int, now: Date) -> TaskPlan<RequeueOutcome> {
        guard leaseExpired(state, now: now) else { return TaskPlan(.notRunning) }
        return requeue(state, maxAttempts: maxAttempts, reason: TaskStoreReasons.leaseExpired(node: state.holder), countAttempt: true, now: now)
    }

    /// A restarted node's own tasks from before its restart: the attempt is counted, the lease not waited for.
    package static func recoverInterrupted(_ state: TaskState, node: String, maxAttempts: Int, now: Date) -> TaskPlan<RequeueOutcome> {
        guard state.isRunning(under: node) else { return TaskPlan(.notRunning) }
        return requeue(state, maxAttempts: maxAttempts, reason: TaskStoreReasons.interrupted, countAttempt: true, now: now)
    }

    /// An owner deletes a task. A running one is stopped like a cancel and leaves its owner's view at once;
    /// its row stays until its node records the end, and then waits for the retention sweep.
    package static func delete(_ state: TaskState?, owner: String) -> TaskPlan<TaskDeletionDecision> {
        guard let state, state.owner == owner else { return TaskPlan(.notFound) }
        guard state.status == .inProgress else { return TaskPlan(.removed, .delete) }
        var next = state
        next.cancelRequested = true
        next.owner = TaskListingOwner.none
        return TaskPlan(.stopping, .update(next), effects: [.stopRequested])
    }

    /// A succeeded task's video passed its lifetime: true for the one sweeper that marks it.
    package static func expireVideo(_ state: TaskState) -> TaskPlan<Bool> {
        guard state.status == .succeed, !state.videoExpired else { return TaskPlan(false) }
        var next = state
        next.videoExpired = true
        return TaskPlan(true, .update(next))
    }
}

/// What `delete` decided; the store answers with the row as it was.
package enum TaskDeletionDecision: Sendable, Equatable {
    case removed
    case stopping
    case notFound
}
