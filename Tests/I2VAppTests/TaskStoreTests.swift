import Foundation
import Configuration
import Logging
import ImageIntake
import Testing
@testable import I2VApp

@Suite struct TaskStoreTests {
    static func record(_ id: String, owner: String = "owner") -> TaskRecord {
        TaskRecord(
            id: id,
            ownerKeyHash: owner,
            parameters: TaskParameters(
                model: "m", prompt: "a prompt of enough length", negativePrompt: "", width: 160, height: 96,
                numFrames: 81, guidanceScale: 3, inferSteps: 30, seed: 7
            ),
            inputPath: "/tmp/\(id).png",
            intake: IntakeTimings()
        )
    }

    @Test func fifoClaimsPositionsAndTheQueueCap() async throws {
        let directory = try TemporaryDirectory()
        let store = try SQLiteTaskStore(path: directory.url.appending(path: "tasks.sqlite").path)
        for index in 0..<3 { try await store.enqueue(Self.record("t\(index)"), maxQueued: 3) }
        await #expect(throws: QueueFullError.self) { try await store.enqueue(Self.record("t3"), maxQueued: 3) }
        #expect(try await store.queuePosition(id: "t2") == 3)
        let first = try await store.claimNext()
        #expect(first?.id == "t0" && first?.status == .inProgress && first?.attempts == 1)
        #expect(try await store.queuePosition(id: "t2") == 2)
        #expect(try await store.queuePosition(id: "t0") == nil)
        #expect(try await store.counts() == QueueCounts(queued: 2, running: 1))
    }

    @Test func recoveryRequeuesOnceThenFails() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.url.appending(path: "tasks.sqlite").path
        do {
            let store = try SQLiteTaskStore(path: path)
            try await store.enqueue(Self.record("a"), maxQueued: 10)
            _ = try await store.claimNext()
        }
        // A new process opens the same file: the running task goes back to the queue, once.
        let reopened = try SQLiteTaskStore(path: path)
        #expect(try await reopened.recoverInterrupted(maxAttempts: 2) == ["a": .requeued])
        #expect(try await reopened.task(id: "a")?.status == .inQueue)
        #expect(try await reopened.claimNext()?.attempts == 2)
        let outcomes = try await reopened.recoverInterrupted(maxAttempts: 2)
        guard case .failed(let reason) = outcomes["a"] else {
            Issue.record("expected failure, got \(outcomes)")
            return
        }
        #expect(reason.contains("2 attempts"))
        let task = try await reopened.task(id: "a")
        #expect(task?.status == .failed && task?.reason == reason && task?.finishedAt != nil)
    }

    @Test func cancelOutcomesAndOwnership() async throws {
        let directory = try TemporaryDirectory()
        let store = try SQLiteTaskStore(path: directory.url.appending(path: "tasks.sqlite").path)
        try await store.enqueue(Self.record("q"), maxQueued: 10)
        try await store.enqueue(Self.record("r"), maxQueued: 10)
        #expect(try await store.cancel(id: "q", ownerKeyHash: "someone else") == .notFound)
        #expect(try await store.cancel(id: "q", ownerKeyHash: "owner") == .cancelledQueued)
        #expect(try await store.cancel(id: "q", ownerKeyHash: "owner") == .alreadyCancelled)
        #expect(try await store.claimNext()?.id == "r")
        #expect(try await store.cancel(id: "r", ownerKeyHash: "owner") == .cancelRequested)
        // A running task the client cancelled is never put back in the queue.
        #expect(try await store.requeue(id: "r", maxAttempts: 5, reason: "worker died", countAttempt: true) == .cancelled)
        #expect(try await store.task(id: "r")?.status == .cancelled)
        #expect(try await store.cancel(id: "nope", ownerKeyHash: "owner") == .notFound)
    }

    /// A cancel acknowledged with 200 is a promise: a result that arrives afterwards (the worker was past its
    /// last step, decoding or encoding) still ends the task Cancelled, with no result kept.
    @Test func aResultAfterAnAcknowledgedCancelEndsCancelled() async throws {
        let directory = try TemporaryDirectory()
        let store = try SQLiteTaskStore(path: directory.url.appending(path: "tasks.sqlite").path)
        try await store.enqueue(Self.record("late"), maxQueued: 10)
        try await store.enqueue(Self.record("kept"), maxQueued: 10)
        _ = try await store.claimNext()
        _ = try await store.claimNext()
        #expect(try await store.cancel(id: "late", ownerKeyHash: "owner") == .cancelRequested)
        let result = TaskResult(videoName: "v", width: 16, height: 16, numFrames: 5, fps: 16, inferenceSeconds: 1, encodeSeconds: 0)
        #expect(try await store.finish(id: "late", outcome: .succeeded(result)) == .ended(.cancelled))
        let late = try await store.task(id: "late")
        #expect(late?.status == .cancelled && late?.result == nil && late?.reason == "cancelled by the client")
        #expect(try await store.finish(id: "kept", outcome: .succeeded(result)) == .ended(.succeed))
        #expect(try await store.task(id: "kept")?.result?.videoName == "v")
        // Once ended, a second result changes nothing.
        #expect(try await store.finish(id: "kept", outcome: .failed(reason: "x")) == .notRunning)
        #expect(try await store.task(id: "kept")?.status == .succeed)
    }

    @Test func retentionDeletesOldTasks() async throws {
        let directory = try TemporaryDirectory()
        let store = try SQLiteTaskStore(path: directory.url.appending(path: "tasks.sqlite").path)
        try await store.enqueue(Self.record("old"), maxQueued: 10)
        _ = try await store.claimNext()
        try await store.finish(id: "old", outcome: .failed(reason: "x"))
        #expect(try await store.deleteTasks(finishedBefore: Date().addingTimeInterval(-60)).isEmpty)
        #expect(try await store.deleteTasks(finishedBefore: Date().addingTimeInterval(1)).map(\.id) == ["old"])
        #expect(try await store.task(id: "old") == nil)
    }
}
