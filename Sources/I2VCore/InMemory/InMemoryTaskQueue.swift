import Foundation

/// The queue port held in memory: the same transitions as the database stores (every decision is
/// `TaskStateMachine`'s), for unit tests of the dispatcher, the reaper and the use cases that need no
/// database, and as the reference the store contract suite holds the SQL adapters to. Nothing survives the
/// process, so it is never a production store.
package actor InMemoryTaskQueue: TaskQueue {
    private struct Entry {
        var record: TaskRecord
        var state: TaskState
        /// Queue order: the submit's order, kept when a task is requeued so it goes back to the front by age.
        var seq: Int64
        var result: TaskResult?
    }

    private var entries: [String: Entry] = [:]
    private var nextSeq: Int64 = 1
    /// Told of every plan's effects, as PostgreSQL's NOTIFY tells listening nodes.
    private let signal: DispatchSignal?

    package init(signal: DispatchSignal? = nil) {
        self.signal = signal
    }

    package func enqueue(_ task: TaskRecord, maxQueued: Int) async throws {
        let queued = entries.values.count { $0.state.status == .inQueue }
        guard queued < maxQueued else { throw QueueFullError(queued: queued) }
        entries[task.id] = Entry(record: task, state: TaskState(status: .inQueue, owner: task.ownerKeyHash), seq: nextSeq)
        nextSeq += 1
        signal?.wake()
    }

    package func task(id: String) async throws -> TaskRecord? {
        entries[id].map(Self.record)
    }

    package func queuePosition(id: String) async throws -> Int? {
        guard let entry = entries[id], entry.state.status == .inQueue else { return nil }
        let model = entry.record.parameters.model.lowercased()
        return entries.values.count { $0.state.status == .inQueue && $0.seq <= entry.seq && $0.record.parameters.model.lowercased() == model }
    }

    package func counts() async throws -> QueueCounts {
        QueueCounts(
            queued: entries.values.count { $0.state.status == .inQueue },
            running: entries.values.count { $0.state.status == .inProgress }
        )
    }

    package func claimNext(node: String, lease: Duration, models: [String]?, loraSet: String?) async throws -> TaskRecord? {
        let wanted = models.map { Set($0.map { $0.lowercased() }) }
        let queued = entries.filter { entry in
            entry.value.state.status == .inQueue && wanted?.contains(entry.value.record.parameters.model.lowercased()) != false
                && loraSet.map { TaskLoRA.setKey(entry.value.record.loras) == $0 } != false
        }
        guard let (id, entry) = queued.min(by: { $0.value.seq < $1.value.seq }) else { return nil }
        let now = Date()
        let plan = TaskStateMachine.claim(
            entry.state, node: node, leaseUntil: now.addingTimeInterval(lease.seconds), totalSteps: entry.record.parameters.inferSteps,
            now: now
        )
        guard apply(plan, id: id) else { return nil }
        return try await task(id: id)
    }

    package func renewLeases(node: String, ids: [String], lease: Duration) async throws -> Set<String> {
        let now = Date()
        var held = Set<String>()
        for id in ids {
            guard let state = entries[id]?.state else { continue }
            if apply(TaskStateMachine.renew(state, node: node, leaseUntil: now.addingTimeInterval(lease.seconds), now: now), id: id) {
                held.insert(id)
            }
        }
        return held
    }

    package func recordProgress(id: String, node: String, step: Int, total: Int) async throws {
        guard let state = entries[id]?.state else { return }
        _ = apply(TaskStateMachine.progress(state, node: node, step: step, total: total), id: id)
    }

    @discardableResult
    package func finish(id: String, node: String, outcome: TaskOutcome) async throws -> FinishOutcome {
        guard let state = entries[id]?.state else { return .notRunning }
        return apply(TaskStateMachine.finish(state, node: node, outcome: outcome, now: Date()), id: id)
    }

    package func cancel(id: String, ownerKeyHash: String) async throws -> CancelOutcome {
        apply(TaskStateMachine.cancel(entries[id]?.state, owner: ownerKeyHash, now: Date()), id: id)
    }

    package func cancelRequested(among ids: [String]) async throws -> Set<String> {
        Set(ids.filter { entries[$0].map { $0.state.cancelRequested && $0.state.status == .inProgress } ?? false })
    }

    package func requeue(id: String, node: String, maxAttempts: Int, reason: String, countAttempt: Bool) async throws -> RequeueOutcome {
        guard let state = entries[id]?.state else { return .notRunning }
        let plan = TaskStateMachine.requeue(state, node: node, maxAttempts: maxAttempts, reason: reason, countAttempt: countAttempt, now: Date())
        return apply(plan, id: id)
    }

    package func recoverInterrupted(node: String, maxAttempts: Int) async throws -> [String: RequeueOutcome] {
        var outcomes: [String: RequeueOutcome] = [:]
        for (id, entry) in entries where entry.state.isRunning(under: node) {
            outcomes[id] = apply(TaskStateMachine.recoverInterrupted(entry.state, node: node, maxAttempts: maxAttempts, now: Date()), id: id)
        }
        return outcomes
    }

    package func requeueExpiredLeases(maxAttempts: Int, now: Date) async throws -> [String: RequeueOutcome] {
        var outcomes: [String: RequeueOutcome] = [:]
        for (id, entry) in entries where TaskStateMachine.leaseExpired(entry.state, now: now) {
            outcomes[id] = apply(TaskStateMachine.expireLease(entry.state, maxAttempts: maxAttempts, now: now), id: id)
        }
        return outcomes
    }

    package func ping() async throws {}

    /// Writes a plan's change and passes its effects on; the outcome is the plan's.
    private func apply<Outcome>(_ plan: TaskPlan<Outcome>, id: String) -> Outcome {
        switch plan.change {
        case .none:
            break
        case .delete:
            entries[id] = nil
        case .update(let state, let result):
            entries[id]?.state = state
            if let result { entries[id]?.result = result }
        }
        if !plan.effects.isEmpty { signal?.wake() }
        return plan.outcome
    }

    /// The record as a store reads it back: what was submitted, with the lifecycle's current columns.
    private static func record(_ entry: Entry) -> TaskRecord {
        var record = entry.record
        let state = entry.state
        record.status = state.status
        record.ownerKeyHash = state.owner
        record.attempts = state.attempts
        record.cancelRequested = state.cancelRequested
        record.progressStep = state.progressStep
        record.progressTotal = state.progressTotal
        record.lease = state.status == .inProgress ? zip(state.holder, state.leaseExpiresAt).map(Lease.init) : nil
        record.startedAt = state.startedAt
        record.finishedAt = state.finishedAt
        record.reason = state.reason
        record.videoExpired = state.videoExpired
        record.result = entry.result
        return record
    }
}

private func zip<A, B>(_ a: A?, _ b: B?) -> (A, B)? {
    guard let a, let b else { return nil }
    return (a, b)
}
