import Foundation
import Testing

@testable import I2VCore

/// Every transition of the task state machine, without a database: the stores only apply these plans.
@Suite struct TaskStateMachineTests {
    static let now = Date(timeIntervalSince1970: 1_000_000)
    static let later = now.addingTimeInterval(60)
    static let result = TaskResult(videoName: "v", width: 832, height: 480, numFrames: 81, fps: 16, inferenceSeconds: 3, encodeSeconds: 1)

    static func queued(attempts: Int = 0, holder: String? = nil) -> TaskState {
        TaskState(status: .inQueue, owner: "alice", attempts: attempts, holder: holder)
    }

    static func running(on node: String = "a", attempts: Int = 1, cancelRequested: Bool = false, leaseUntil: Date = later) -> TaskState {
        TaskState(
            status: .inProgress, owner: "alice", attempts: attempts, cancelRequested: cancelRequested, holder: node,
            leaseExpiresAt: leaseUntil, startedAt: now, progressStep: 3, progressTotal: 30
        )
    }

    static func updated<O>(_ plan: TaskPlan<O>) -> TaskState? {
        if case .update(let state, _) = plan.change { return state }
        return nil
    }

    @Test func aClaimCountsTheAttemptAndStartsTheLease() throws {
        let plan = TaskStateMachine.claim(Self.queued(attempts: 1), node: "a", leaseUntil: Self.later, totalSteps: 30, now: Self.now)
        #expect(plan.outcome)
        let next = try #require(Self.updated(plan))
        #expect(next.status == .inProgress && next.attempts == 2 && next.holder == "a" && next.leaseExpiresAt == Self.later)
        #expect(next.progressStep == 0 && next.progressTotal == 30 && next.startedAt == Self.now)
        #expect(TaskStateMachine.claim(Self.running(), node: "b", leaseUntil: Self.later, totalSteps: 30, now: Self.now) == TaskPlan(false))
    }

    @Test func onlyTheHolderRenewsAndRecordsProgress() throws {
        let renewed = TaskStateMachine.renew(Self.running(leaseUntil: Self.now), node: "a", leaseUntil: Self.later, now: Self.now)
        #expect(renewed.outcome && Self.updated(renewed)?.leaseExpiresAt == Self.later)
        #expect(!TaskStateMachine.renew(Self.running(), node: "b", leaseUntil: Self.later, now: Self.now).outcome)
        #expect(Self.updated(TaskStateMachine.progress(Self.running(), node: "a", step: 7, total: 30))?.progressStep == 7)
        #expect(TaskStateMachine.progress(Self.running(), node: "b", step: 7, total: 30) == TaskPlan(false))
    }

    /// A node cut off from the store past its lease gets its task back on its next heartbeat, if nobody
    /// claimed it meanwhile; its job never stopped.
    @Test func aHeartbeatTakesBackATaskRequeuedFromItsNodeUnlessAnotherClaimedIt() throws {
        let requeued = try #require(Self.updated(TaskStateMachine.expireLease(Self.running(leaseUntil: Self.now), maxAttempts: 3, now: Self.later)))
        #expect(requeued.status == .inQueue && requeued.holder == "a" && requeued.leaseExpiresAt == nil)
        let back = TaskStateMachine.renew(requeued, node: "a", leaseUntil: Self.later, now: Self.later)
        #expect(back.outcome)
        #expect(Self.updated(back)?.status == .inProgress && Self.updated(back)?.holder == "a")
        #expect(!TaskStateMachine.renew(requeued, node: "b", leaseUntil: Self.later, now: Self.later).outcome)
        let claimed = try #require(Self.updated(TaskStateMachine.claim(requeued, node: "b", leaseUntil: Self.later, totalSteps: 30, now: Self.later)))
        #expect(!TaskStateMachine.renew(claimed, node: "a", leaseUntil: Self.later, now: Self.later).outcome)
    }

    @Test func finishRecordsTheHoldersEnding() throws {
        let success = TaskStateMachine.finish(Self.running(), node: "a", outcome: .succeeded(Self.result), now: Self.later)
        #expect(success.outcome == .ended(.succeed))
        guard case .update(let ended, let result) = success.change else { Issue.record("no update"); return }
        #expect(result == Self.result && ended.status == .succeed && ended.finishedAt == Self.later)
        #expect(ended.holder == nil && ended.leaseExpiresAt == nil && ended.progressStep == nil)

        let failure = TaskStateMachine.finish(Self.running(), node: "a", outcome: .failed(reason: "oom"), now: Self.later)
        #expect(failure.outcome == .ended(.failed) && Self.updated(failure)?.reason == "oom")
        #expect(TaskStateMachine.finish(Self.running(), node: "b", outcome: .succeeded(Self.result), now: Self.later) == TaskPlan(.notRunning))
        #expect(TaskStateMachine.finish(Self.queued(), node: "a", outcome: .succeeded(Self.result), now: Self.later) == TaskPlan(.notRunning))
    }

    @Test func aSuccessAfterAnAcknowledgedCancelEndsCancelled() {
        let plan = TaskStateMachine.finish(Self.running(cancelRequested: true), node: "a", outcome: .succeeded(Self.result), now: Self.later)
        #expect(plan.outcome == .ended(.cancelled))
        #expect(Self.updated(plan)?.reason == TaskStateMachine.cancelledByClient)
        guard case .update(_, let result) = plan.change else { return }
        #expect(result == nil)
    }

    /// The result of an attempt taken back while its node was cut off counts until another node claims
    /// the task; the attempt's failure does not (the next attempt is still to come).
    @Test func aLateResultFromThePreviousHolderIsKeptUntilTheTaskIsClaimedAgain() throws {
        let requeued = try #require(Self.updated(TaskStateMachine.expireLease(Self.running(leaseUntil: Self.now), maxAttempts: 3, now: Self.later)))
        let late = TaskStateMachine.finish(requeued, node: "a", outcome: .succeeded(Self.result), now: Self.later)
        #expect(late.outcome == .ended(.succeed))
        #expect(Self.updated(late)?.startedAt != nil)
        #expect(TaskStateMachine.finish(requeued, node: "a", outcome: .failed(reason: "x"), now: Self.later) == TaskPlan(.notRunning))
        #expect(TaskStateMachine.finish(requeued, node: "a", outcome: .cancelled(reason: "x"), now: Self.later) == TaskPlan(.notRunning))
        let claimed = try #require(Self.updated(TaskStateMachine.claim(requeued, node: "b", leaseUntil: Self.later, totalSteps: 30, now: Self.later)))
        #expect(TaskStateMachine.finish(claimed, node: "a", outcome: .succeeded(Self.result), now: Self.later) == TaskPlan(.notRunning))
    }

    @Test func cancelEndsAQueuedTaskAndTellsTheNodeOfARunningOne() {
        let queued = TaskStateMachine.cancel(Self.queued(), owner: "alice", now: Self.now)
        #expect(queued.outcome == .cancelledQueued && Self.updated(queued)?.status == .cancelled && queued.effects.isEmpty)
        let running = TaskStateMachine.cancel(Self.running(), owner: "alice", now: Self.now)
        #expect(running.outcome == .cancelRequested && Self.updated(running)?.cancelRequested == true)
        #expect(Self.updated(running)?.status == .inProgress)
        #expect(running.effects == [.stopRequested])
        #expect(TaskStateMachine.cancel(Self.running(), owner: "bob", now: Self.now) == TaskPlan(.notFound))
        #expect(TaskStateMachine.cancel(nil, owner: "alice", now: Self.now) == TaskPlan(.notFound))
        var done = Self.running()
        done.status = .succeed
        #expect(TaskStateMachine.cancel(done, owner: "alice", now: Self.now) == TaskPlan(.alreadyFinished(.succeed)))
        done.status = .cancelled
        #expect(TaskStateMachine.cancel(done, owner: "alice", now: Self.now) == TaskPlan(.alreadyCancelled))
    }

    /// Deleting a running task stops it exactly as a cancel does, notification included: the two paths
    /// once drifted apart, and a delete through an API node waited for the worker node's next poll.
    @Test func deletingARunningTaskTellsItsNodeLikeACancel() {
        let plan = TaskStateMachine.delete(Self.running(), owner: "alice")
        #expect(plan.outcome == .stopping)
        #expect(plan.effects == TaskStateMachine.cancel(Self.running(), owner: "alice", now: Self.now).effects)
        #expect(Self.updated(plan)?.cancelRequested == true && Self.updated(plan)?.owner == TaskListingOwner.none)
        #expect(TaskStateMachine.delete(Self.queued(), owner: "alice") == TaskPlan(.removed, .delete))
        #expect(TaskStateMachine.delete(Self.queued(), owner: "bob") == TaskPlan(.notFound))
    }

    @Test func requeueGoesBackFailsWhenOutOfAttemptsOrEndsCancelled() throws {
        let back = TaskStateMachine.requeue(Self.running(attempts: 1), maxAttempts: 2, reason: "lost", countAttempt: true, now: Self.now)
        #expect(back.outcome == .requeued && back.effects == [.taskQueued])
        let state = try #require(Self.updated(back))
        #expect(state.status == .inQueue && state.attempts == 1 && state.startedAt == nil && state.progressStep == nil)

        let given = TaskStateMachine.requeue(Self.running(attempts: 2), maxAttempts: 2, reason: "shutdown", countAttempt: false, now: Self.now)
        #expect(given.outcome == .requeued && Self.updated(given)?.attempts == 1)

        let failed = TaskStateMachine.requeue(Self.running(attempts: 2), maxAttempts: 2, reason: "lost", countAttempt: true, now: Self.now)
        #expect(failed.outcome == .failed(reason: "lost; gave up after 2 attempts"))
        #expect(Self.updated(failed)?.status == .failed && failed.effects.isEmpty)

        let cancelled = TaskStateMachine.requeue(Self.running(cancelRequested: true), maxAttempts: 2, reason: "lost", countAttempt: true, now: Self.now)
        #expect(cancelled.outcome == .cancelled && Self.updated(cancelled)?.status == .cancelled)

        #expect(TaskStateMachine.requeue(Self.running(), node: "b", maxAttempts: 2, reason: "x", countAttempt: true, now: Self.now) == TaskPlan(.notRunning))
        #expect(TaskStateMachine.requeue(Self.queued(), maxAttempts: 2, reason: "x", countAttempt: true, now: Self.now) == TaskPlan(.notRunning))
    }

    @Test func leaseExpiryAndRecoveryTakeTheTaskFromItsNode() {
        #expect(TaskStateMachine.expireLease(Self.running(leaseUntil: Self.later), maxAttempts: 3, now: Self.now) == TaskPlan(.notRunning))
        let expired = TaskStateMachine.expireLease(Self.running(on: "gone", leaseUntil: Self.now), maxAttempts: 1, now: Self.later)
        #expect(expired.outcome == .failed(reason: "node gone stopped renewing its lease on the task; gave up after 1 attempt"))
        var legacy = Self.running()
        legacy.leaseExpiresAt = nil
        #expect(TaskStateMachine.leaseExpired(legacy, now: Self.now))

        #expect(TaskStateMachine.recoverInterrupted(Self.running(on: "a"), node: "a", maxAttempts: 3, now: Self.now).outcome == .requeued)
        #expect(TaskStateMachine.recoverInterrupted(Self.running(on: "b"), node: "a", maxAttempts: 3, now: Self.now) == TaskPlan(.notRunning))
    }

    @Test func aVideoExpiresOnce() {
        var done = Self.running()
        done.status = .succeed
        let plan = TaskStateMachine.expireVideo(done)
        #expect(plan.outcome && Self.updated(plan)?.videoExpired == true)
        #expect(TaskStateMachine.expireVideo(Self.updated(plan)!) == TaskPlan(false))
        #expect(TaskStateMachine.expireVideo(Self.running()) == TaskPlan(false))
    }

    @Test func aReaperJudgesLeasesOnlyAfterSeeingTheStoreForAWholeLease() {
        var watch = StoreWatch(lease: .seconds(10))
        let start = ContinuousClock.now
        // Seconds after the start at which the store answered, and whether the reaper may judge leases then.
        var judged: [Bool] = []
        for offset in [0, 5, 10] { judged.append(watch.answered(at: start + .seconds(offset))) }
        #expect(judged == [false, false, true])
        watch.failed()
        judged = []
        for offset in [11, 20, 21] { judged.append(watch.answered(at: start + .seconds(offset))) }
        #expect(judged == [false, false, true])
    }
}
