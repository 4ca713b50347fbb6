import Foundation
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The worker registry, idempotency keys and the estimates' measurements, against both stores.
@Suite struct TaskStoreRegistryTests {
    static let model = ServedModel(id: "wan-test", nativeArea: 15_360)

    static func node(_ id: String, at heartbeat: Date, slots: Int = 2, free: Int? = nil) -> WorkerNode {
        WorkerNode(
            id: id, models: [model], slots: slots, running: 1, freeMemoryBytes: free, bytesPerToken: free.map { _ in 4096 },
            startedAt: heartbeat.addingTimeInterval(-5), heartbeatAt: heartbeat, devices: ["cuda:0+cuda:1", "cuda:2"]
        )
    }

    @Test(arguments: StoreKind.allCases)
    func heartbeatsRegisterReplaceAndLeave(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            let now = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 * 1000).rounded() / 1000)
            try await store.recordHeartbeat(Self.node("gpu-a", at: now.addingTimeInterval(-40)))
            try await store.recordHeartbeat(Self.node("gpu-b", at: now, free: 8_000_000_000))
            var nodes = try await store.workerNodes()
            #expect(nodes.map(\.id) == ["gpu-b", "gpu-a"], "most recently heard first")
            #expect(nodes.first == Self.node("gpu-b", at: now, free: 8_000_000_000))
            #expect(nodes.map { $0.isLive(now: now, lease: .seconds(30)) } == [true, false])

            // The next heartbeat replaces the registration.
            try await store.recordHeartbeat(Self.node("gpu-a", at: now.addingTimeInterval(1), slots: 4))
            nodes = try await store.workerNodes()
            #expect(nodes.map(\.id) == ["gpu-a", "gpu-b"] && nodes.first?.slots == 4)

            // A clean stop leaves at once; a registration unheard of for a day goes with the next heartbeat.
            try await store.removeWorkerNode(id: "gpu-a")
            try await store.recordHeartbeat(Self.node("gpu-old", at: now.addingTimeInterval(-90_000)))
            try await store.recordHeartbeat(Self.node("gpu-b", at: now.addingTimeInterval(2)))
            #expect(try await store.workerNodes().map(\.id) == ["gpu-b"])
        }
    }

    @Test(arguments: StoreKind.allCases)
    func anIdempotencyKeyNamesOneTaskPerOwnerForADay(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            let now = Date()
            let dayAgo = now.addingTimeInterval(-86_400)
            let key = IdempotencyKey(owner: "alice", key: "retry-1", requestHash: "h1")
            #expect(try await store.reserveIdempotencyKey(key, taskID: "t1", validAfter: dayAgo, now: now) == .reserved)
            let taken = try await store.reserveIdempotencyKey(key, taskID: "t2", validAfter: dayAgo, now: now)
            guard case .taken(let task, let hash, let queued, _) = taken else {
                Issue.record("a second reservation of the key got \(taken)")
                return
            }
            #expect(task == "t1" && hash == "h1" && !queued)
            // Another owner's key of the same name is its own.
            #expect(
                try await store.reserveIdempotencyKey(
                    IdempotencyKey(owner: "bob", key: "retry-1", requestHash: "h9"), taskID: "t3", validAfter: dayAgo, now: now) == .reserved)

            // A completed reservation cannot be released by a late failure path; it answers with its task.
            try await store.completeIdempotencyKey(key, taskID: "t1")
            try await store.releaseIdempotencyKey(key, taskID: "t1")
            let completed = try await store.reserveIdempotencyKey(key, taskID: "t4", validAfter: dayAgo, now: now)
            #expect({ if case .taken("t1", "h1", true, _) = completed { true } else { false } }(), "\(completed)")

            // A released (failed) submit frees the key; so does the end of its day.
            let failed = IdempotencyKey(owner: "alice", key: "retry-2", requestHash: "h2")
            #expect(try await store.reserveIdempotencyKey(failed, taskID: "t5", validAfter: dayAgo, now: now) == .reserved)
            try await store.releaseIdempotencyKey(failed, taskID: "t5")
            #expect(try await store.reserveIdempotencyKey(failed, taskID: "t6", validAfter: dayAgo, now: now) == .reserved)
            let tomorrow = now.addingTimeInterval(86_401)
            #expect(try await store.reserveIdempotencyKey(key, taskID: "t7", validAfter: tomorrow.addingTimeInterval(-86_400), now: tomorrow) == .reserved)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func concurrentReservationsOfOneKeyHaveOneWinner(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            let key = IdempotencyKey(owner: "alice", key: "burst", requestHash: "h")
            let outcomes = try await withThrowingTaskGroup(of: IdempotencyReservation.self) { group in
                for index in 0..<10 {
                    group.addTask { try await store.reserveIdempotencyKey(key, taskID: "t\(index)", validAfter: .distantPast, now: Date()) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(outcomes.filter { $0 == .reserved }.count == 1, "\(outcomes)")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func jobProfilesAverageTheRecentSuccessesOfOneSize(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            #expect(try await store.jobProfile(width: 160, height: 96, frames: 81) == nil)
            for (index, seconds) in [30.0, 60.0].enumerated() {
                try await store.enqueue(TaskStoreTests.record("done\(index)"), maxQueued: 10)
                _ = try await store.claimNext(node: "n", lease: .seconds(30))
                var result = TaskStoreTests.result
                result.width = 160
                result.height = 96
                result.numFrames = 81
                result.inferenceSeconds = seconds
                result.encodeSeconds = 2
                result.inferSteps = 30
                try await store.finish(id: "done\(index)", node: "n", outcome: .succeeded(result))
            }
            let profile = try #require(try await store.jobProfile(width: 160, height: 96, frames: 81))
            #expect(abs(profile.secondsPerStep - 1.5) < 1e-9 && abs(profile.encodeSeconds - 2) < 1e-9)
            #expect(try await store.jobProfile(width: 96, height: 160, frames: 81) == nil, "another size has none")

            try await store.enqueue(TaskStoreTests.record("running"), maxQueued: 10)
            _ = try await store.claimNext(node: "n", lease: .seconds(30))
            try await store.recordProgress(id: "running", node: "n", step: 10, total: 30)
            #expect(try await store.runningWork() == [RemainingWork(width: 160, height: 96, frames: 81, steps: 20)])
        }
    }
}
