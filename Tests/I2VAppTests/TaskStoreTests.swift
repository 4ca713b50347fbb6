import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The store contract: every case runs against SQLite and PostgreSQL on the test cluster (skipped without
/// one, a failure under `I2V_TEST_STRICT=1`), and the cases of the queue port against the in-memory queue
/// too.
@Suite struct TaskStoreTests {
    static func record(_ id: String, owner: String = "owner", model: String = "m") -> TaskRecord {
        TaskRecord(
            id: id,
            ownerKeyHash: owner,
            parameters: TaskParameters(
                model: model, prompt: "a prompt of enough length", negativePrompt: "", width: 160, height: 96,
                numFrames: 81, guidanceScale: 3, inferSteps: 30, seed: 7
            ),
            inputKey: "\(id).png",
            intake: IntakeTimings()
        )
    }

    static let node = "node-a"
    static let lease = Duration.seconds(30)

    static let result = TaskResult(videoName: "v", width: 16, height: 16, numFrames: 5, fps: 16, inferenceSeconds: 1, encodeSeconds: 0)

    /// Each model is a queue of its own: a node claims the oldest task of the models it serves (ids without
    /// case), and a task's position counts only its own model's tasks ahead of it.
    @Test(arguments: QueueKind.allCases)
    func claimsAndPositionsArePerModel(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            for (id, model) in [("a1", "wan-a"), ("a2", "wan-a"), ("b1", "wan-b"), ("a3", "wan-a"), ("b2", "Wan-B")] {
                try await store.enqueue(Self.record(id, model: model), maxQueued: 10)
            }
            #expect(try await store.queuePosition(id: "a3") == 3)
            #expect(try await store.queuePosition(id: "b1") == 1)
            #expect(try await store.queuePosition(id: "b2") == 2)
            #expect(try await store.claimNext(node: "gpu-b", lease: Self.lease, models: ["WAN-B"])?.id == "b1")
            #expect(try await store.claimNext(node: "gpu-b", lease: Self.lease, models: ["wan-b"])?.id == "b2")
            #expect(try await store.claimNext(node: "gpu-b", lease: Self.lease, models: ["wan-b"]) == nil)
            #expect(try await store.claimNext(node: "gpu-c", lease: Self.lease, models: ["wan-c", "wan-a"])?.id == "a1")
            #expect(try await store.claimNext(node: "gpu-c", lease: Self.lease, models: []) == nil)
            // Without a filter, the oldest of any model.
            #expect(try await store.claimNext(node: "gpu-any", lease: Self.lease)?.id == "a2")
        }
    }

    /// A claim for one LoRA set takes the oldest task of that set only, the same set in any order of its
    /// LoRAs; the set of no LoRAs is the empty key.
    @Test(arguments: QueueKind.allCases)
    func claimsForALoRASetTakeOnlyThatSet(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            let a = TaskLoRA(name: "a", scale: 1, sha256: "aa")
            let b = TaskLoRA(name: "b", scale: 0.5, sha256: "bb")
            for (id, loras) in [("plain", []), ("ab", [a, b]), ("a", [a]), ("ba", [b, a]), ("plain2", [])] as [(String, [TaskLoRA])] {
                var record = Self.record(id)
                record.loras = loras
                try await store.enqueue(record, maxQueued: 10)
            }
            let ab = TaskLoRA.setKey([a, b])
            #expect(ab == TaskLoRA.setKey([b, a]) && ab != TaskLoRA.setKey([a]) && TaskLoRA.setKey([]) == "")
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease, models: nil, loraSet: ab)?.id == "ab")
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease, models: ["m"], loraSet: ab)?.id == "ba")
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease, models: nil, loraSet: ab) == nil)
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease, models: ["other"], loraSet: "") == nil)
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease, models: nil, loraSet: "")?.id == "plain")
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease)?.id == "a")
        }
    }

    @Test(arguments: QueueKind.allCases)
    func fifoClaimsPositionsAndTheQueueCap(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            for index in 0..<3 { try await store.enqueue(Self.record("t\(index)"), maxQueued: 3) }
            await #expect(throws: QueueFullError.self) { try await store.enqueue(Self.record("t3"), maxQueued: 3) }
            #expect(try await store.queuePosition(id: "t2") == 3)
            let first = try await store.claimNext(node: Self.node, lease: Self.lease)
            #expect(first?.id == "t0" && first?.status == .inProgress && first?.attempts == 1)
            #expect(first?.progressStep == 0 && first?.progressTotal == 30 && first?.startedAt != nil)
            #expect(try await store.queuePosition(id: "t2") == 2)
            #expect(try await store.queuePosition(id: "t0") == nil)
            #expect(try await store.queuePosition(id: "nope") == nil)
            #expect(try await store.counts() == QueueCounts(queued: 2, running: 1))
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease)?.id == "t1")
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease)?.id == "t2")
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease) == nil)
        }
    }

    @Test(arguments: QueueKind.allCases)
    func recoveryRequeuesOnceThenFails(_ kind: QueueKind) async throws {
        try await withQueueDatabase(kind) { database in
            try await database.withQueue { store in
                try await store.enqueue(Self.record("a"), maxQueued: 10)
                _ = try await store.claimNext(node: Self.node, lease: Self.lease)
            }
            // A new process opens the same database: the running task goes back to the queue, once.
            try await database.withQueue { reopened in
                #expect(try await reopened.recoverInterrupted(node: Self.node, maxAttempts: 2) == ["a": .requeued])
                let requeued = try await reopened.task(id: "a")
                #expect(requeued?.status == .inQueue && requeued?.startedAt == nil && requeued?.progressStep == nil)
                #expect(try await reopened.claimNext(node: Self.node, lease: Self.lease)?.attempts == 2)
                let outcomes = try await reopened.recoverInterrupted(node: Self.node, maxAttempts: 2)
                guard case .failed(let reason) = outcomes["a"] else {
                    Issue.record("expected failure, got \(outcomes)")
                    return
                }
                #expect(reason.contains("2 attempts"))
                let task = try await reopened.task(id: "a")
                #expect(task?.status == .failed && task?.reason == reason && task?.finishedAt != nil)
                #expect(try await reopened.recoverInterrupted(node: Self.node, maxAttempts: 2).isEmpty)
            }
        }
    }

    @Test(arguments: QueueKind.allCases)
    func requeueCountsAttemptsUnlessToldNotTo(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            try await store.enqueue(Self.record("a"), maxQueued: 10)
            try await store.enqueue(Self.record("b"), maxQueued: 10)
            #expect(try await store.requeue(id: "a", node: Self.node, maxAttempts: 1, reason: "x", countAttempt: true) == .notRunning)
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)
            // Not the task's fault (the worker restarted): the attempt is given back.
            #expect(try await store.requeue(id: "a", node: Self.node, maxAttempts: 1, reason: "worker restarted", countAttempt: false) == .requeued)
            #expect(try await store.task(id: "a")?.attempts == 0)
            // Back at the front of the queue, ahead of the younger task.
            #expect(try await store.queuePosition(id: "a") == 1)
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease)?.id == "a")
            let outcome = try await store.requeue(id: "a", node: Self.node, maxAttempts: 1, reason: "worker died", countAttempt: true)
            #expect(outcome == .failed(reason: "worker died; gave up after 1 attempt"))
            #expect(try await store.task(id: "a")?.status == .failed)
        }
    }

    @Test(arguments: QueueKind.allCases)
    func cancelOutcomesAndOwnership(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            try await store.enqueue(Self.record("q"), maxQueued: 10)
            try await store.enqueue(Self.record("r"), maxQueued: 10)
            #expect(try await store.cancel(id: "q", ownerKeyHash: "someone else") == .notFound)
            #expect(try await store.cancel(id: "q", ownerKeyHash: "owner") == .cancelledQueued)
            #expect(try await store.cancel(id: "q", ownerKeyHash: "owner") == .alreadyCancelled)
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease)?.id == "r")
            #expect(try await store.cancelRequested(among: ["r", "q"]).isEmpty)
            #expect(try await store.cancel(id: "r", ownerKeyHash: "owner") == .cancelRequested)
            #expect(try await store.cancelRequested(among: ["r", "q", "nope"]) == ["r"])
            #expect(try await store.cancelRequested(among: []).isEmpty)
            // A running task the client cancelled is never put back in the queue.
            #expect(try await store.requeue(id: "r", node: Self.node, maxAttempts: 5, reason: "worker died", countAttempt: true) == .cancelled)
            #expect(try await store.task(id: "r")?.status == .cancelled)
            #expect(try await store.cancel(id: "r", ownerKeyHash: "owner") == .alreadyCancelled)
            #expect(try await store.cancel(id: "nope", ownerKeyHash: "owner") == .notFound)
        }
    }

    /// A cancel acknowledged with 200 is a promise: a result that arrives afterwards (the worker was past its
    /// last step, decoding or encoding) still ends the task Cancelled, with no result kept.
    @Test(arguments: QueueKind.allCases)
    func aResultAfterAnAcknowledgedCancelEndsCancelled(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            try await store.enqueue(Self.record("late"), maxQueued: 10)
            try await store.enqueue(Self.record("kept"), maxQueued: 10)
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)
            #expect(try await store.cancel(id: "late", ownerKeyHash: "owner") == .cancelRequested)
            #expect(try await store.finish(id: "late", node: Self.node, outcome: .succeeded(Self.result)) == .ended(.cancelled))
            let late = try await store.task(id: "late")
            #expect(late?.status == .cancelled && late?.result == nil && late?.reason == "cancelled by the client")
            #expect(try await store.finish(id: "kept", node: Self.node, outcome: .succeeded(Self.result)) == .ended(.succeed))
            #expect(try await store.task(id: "kept")?.result?.videoName == "v")
            #expect(try await store.cancel(id: "kept", ownerKeyHash: "owner") == .alreadyFinished(.succeed))
            // Once ended, a second result changes nothing.
            #expect(try await store.finish(id: "kept", node: Self.node, outcome: .failed(reason: "x")) == .notRunning)
            #expect(try await store.task(id: "kept")?.status == .succeed)
        }
    }

    /// Everything a task carries comes back as it went in, times to the last bit included.
    @Test(arguments: QueueKind.allCases)
    func aRecordRoundTripsEveryField(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            var submitted = TaskRecord(
                id: "round-trip",
                ownerKeyHash: "hash-ü",
                parameters: TaskParameters(
                    model: "model-x", prompt: "a prompt with 'quotes', \"double\" and; semicolons -- ünïcödé 🎬",
                    negativePrompt: "blurry", width: 832, height: 480, numFrames: 81, guidanceScale: 5.25,
                    inferSteps: 40, seed: Int(Int32.max) + 12_345
                ),
                inputKey: "round-trip.png",
                intake: IntakeTimings(fetch: 0.125, decode: 0.0625, encode: 1.0 / 3.0),
                createdAt: Date(timeIntervalSince1970: 1_753_000_000.123_456_7)
            )
            submitted.loras = [
                TaskLoRA(name: "style ü", scale: 0.75, sha256: String(repeating: "ab", count: 32)),
                TaskLoRA(name: "b", scale: 2, sha256: String(repeating: "0f", count: 32)),
            ]
            try await store.enqueue(submitted, maxQueued: 10)
            #expect(try await store.task(id: "round-trip") == submitted)

            let claimed = try #require(try await store.claimNext(node: Self.node, lease: Self.lease))
            try await store.recordProgress(id: "round-trip", node: Self.node, step: 7, total: 40)
            submitted.status = .inProgress
            submitted.attempts = 1
            submitted.progressStep = 7
            submitted.progressTotal = 40
            submitted.startedAt = claimed.startedAt
            submitted.lease = claimed.lease
            #expect(claimed.lease?.node == Self.node)
            #expect(try await store.task(id: "round-trip") == submitted)

            let result = TaskResult(
                videoName: "vid-1", width: 832, height: 480, numFrames: 81, fps: 16, inferenceSeconds: 12.5,
                encodeSeconds: 0.75, inferSteps: 4, guidanceScale: 1
            )
            #expect(try await store.finish(id: "round-trip", node: Self.node, outcome: .succeeded(result)) == .ended(.succeed))
            let finished = try #require(try await store.task(id: "round-trip"))
            submitted.status = .succeed
            submitted.progressStep = nil
            submitted.progressTotal = nil
            submitted.result = result
            submitted.lease = nil
            submitted.finishedAt = finished.finishedAt
            #expect(finished == submitted)
            #expect(finished.finishedAt != nil)
        }
    }

    /// A task's LoRAs come back in order with their experts, through every way a task is read; one without
    /// any has none.
    @Test(arguments: StoreKind.allCases)
    func aTaskKeepsItsLoRAs(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            var styled = Self.record("styled")
            styled.loras = [
                TaskLoRA(name: "b", scale: 0, sha256: "11"), TaskLoRA(name: "a", scale: 1.25, sha256: "22", expert: .highNoise),
                TaskLoRA(name: "a", scale: 1.25, sha256: "22", expert: .lowNoise),
            ]
            try await store.enqueue(styled, maxQueued: 10)
            try await store.enqueue(Self.record("plain"), maxQueued: 10)
            #expect(try await store.task(id: "styled")?.loras == styled.loras)
            #expect(try await store.task(id: "plain")?.loras == [])
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease)?.loras == styled.loras)
            #expect(try await store.claimNext(node: Self.node, lease: Self.lease)?.loras == [])
        }
    }

    @Test(arguments: StoreKind.allCases)
    func videoExpiryAndReferencedFiles(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            for id in ["done", "failed", "waiting"] { try await store.enqueue(Self.record(id), maxQueued: 10) }
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)
            try await store.finish(id: "done", node: Self.node, outcome: .succeeded(Self.result))
            try await store.finish(id: "failed", node: Self.node, outcome: .failed(reason: "boom"))
            #expect(try await store.task(id: "failed")?.reason == "boom")
            #expect(try await store.referencedFileNames() == ["done.png", "failed.png", "waiting.png", "v.mp4"])

            #expect(try await store.tasksWithVideosFinished(before: Date().addingTimeInterval(-60)).isEmpty)
            #expect(try await store.tasksWithVideosFinished(before: Date().addingTimeInterval(1)).map(\.id) == ["done"])
            // A second sweeper (another node) marking it too is told it was already done.
            #expect(try await store.markVideoExpired(id: "done"))
            #expect(try await store.markVideoExpired(id: "done") == false)
            #expect(try await store.task(id: "done")?.videoExpired == true)
            #expect(try await store.tasksWithVideosFinished(before: Date().addingTimeInterval(1)).isEmpty)
            try await store.ping()
        }
    }

    @Test(arguments: StoreKind.allCases)
    func retentionDeletesOldTasks(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            try await store.enqueue(Self.record("old"), maxQueued: 10)
            try await store.enqueue(Self.record("queued"), maxQueued: 10)
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)
            try await store.finish(id: "old", node: Self.node, outcome: .failed(reason: "x"))
            #expect(try await store.deleteTasks(finishedBefore: Date().addingTimeInterval(-60)).isEmpty)
            #expect(try await store.deleteTasks(finishedBefore: Date().addingTimeInterval(1)).map(\.id) == ["old"])
            #expect(try await store.task(id: "old") == nil)
            #expect(try await store.task(id: "queued")?.status == .inQueue)
        }
    }

    // MARK: Several nodes on one database

    /// Twenty claims at once, from two stores (two nodes), over ten tasks: every task goes to exactly one claim.
    @Test(arguments: QueueKind.allCases)
    func concurrentClaimsNeverShareATask(_ kind: QueueKind) async throws {
        try await withQueueDatabase(kind) { database in
            try await database.withQueue { first in
                try await database.withQueue { second in
                    for index in 0..<10 { try await first.enqueue(Self.record("c\(index)"), maxQueued: 100) }
                    // Open the pools' connections first, so that the claims below really overlap.
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for index in 0..<20 {
                            let store = index.isMultiple(of: 2) ? first : second
                            group.addTask { _ = try await store.counts() }
                        }
                        try await group.waitForAll()
                    }
                    // No claim may come back empty while a task is still waiting: every task is claimed.
                    let claimed = try await withThrowingTaskGroup(of: String?.self) { group in
                        for index in 0..<20 {
                            let store = index.isMultiple(of: 2) ? first : second
                            group.addTask { try await store.claimNext(node: Self.node, lease: Self.lease)?.id }
                        }
                        var ids: [String] = []
                        for try await id in group { if let id { ids.append(id) } }
                        return ids
                    }
                    #expect(claimed.count == 10)
                    #expect(Set(claimed) == Set((0..<10).map { "c\($0)" }))
                    #expect(try await second.counts() == QueueCounts(queued: 0, running: 10))
                    for index in 0..<10 { #expect(try await first.task(id: "c\(index)")?.attempts == 1) }
                }
            }
        }
    }

    /// A task another node is in the middle of claiming (its row locked) is passed over, not waited for.
    @Test func aClaimSkipsATaskAnotherNodeIsClaiming() async throws {
        try await withFreshPostgresDatabase { endpoint in
            // A claim that waited for the lock would fail here instead of hanging the test.
            try await withPostgresConnection(endpoint) { connection in
                try await connection.query("ALTER DATABASE \(unescaped: endpoint.database) SET lock_timeout = '10s'", logger: TestCluster.logger)
            }
            try await withPostgresStore(endpoint) { store in
                try await store.enqueue(Self.record("held"), maxQueued: 10)
                try await store.enqueue(Self.record("free"), maxQueued: 10)
                try await withPostgresConnection(endpoint) { other in
                    try await other.query("BEGIN", logger: TestCluster.logger)
                    try await other.query("SELECT id FROM tasks WHERE id = 'held' FOR UPDATE", logger: TestCluster.logger)
                    #expect(try await store.claimNext(node: Self.node, lease: Self.lease)?.id == "free")
                    try await other.query("ROLLBACK", logger: TestCluster.logger)
                }
                #expect(try await store.claimNext(node: Self.node, lease: Self.lease)?.id == "held")
            }
        }
    }

    /// Twenty submits at once, from two stores, against a cap of five: exactly five get in.
    @Test(arguments: QueueKind.allCases)
    func theQueueCapHoldsUnderConcurrentEnqueues(_ kind: QueueKind) async throws {
        try await withQueueDatabase(kind) { database in
            try await database.withQueue { first in
                try await database.withQueue { second in
                    let accepted = try await withThrowingTaskGroup(of: Bool.self) { group in
                        for index in 0..<20 {
                            let store = index.isMultiple(of: 2) ? first : second
                            group.addTask {
                                do {
                                    try await store.enqueue(Self.record("e\(index)"), maxQueued: 5)
                                    return true
                                } catch let full as QueueFullError {
                                    #expect(full.queued == 5)
                                    return false
                                }
                            }
                        }
                        var accepted = 0
                        for try await ok in group where ok { accepted += 1 }
                        return accepted
                    }
                    #expect(accepted == 5)
                    #expect(try await first.counts() == QueueCounts(queued: 5, running: 0))
                }
            }
        }
    }

    /// Nodes starting together all migrate the same database; restarts migrate it again. Neither changes
    /// anything twice, and the stores all work on the one schema.
    @Test(arguments: StoreKind.allCases)
    func migrationsAreIdempotentWhenRunTwiceOrConcurrently(_ kind: StoreKind) async throws {
        try await withStoreDatabase(kind) { database in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<3 {
                    group.addTask {
                        try await database.withStore { store in
                            try await store.enqueue(Self.record("m\(index)"), maxQueued: 10)
                        }
                    }
                }
                try await group.waitForAll()
            }
            let counts = try await database.withStore { store in try await store.counts() }
            #expect(counts == QueueCounts(queued: 3, running: 0))
            guard let endpoint = database.endpoint else { return }
            let applied = try await withPostgresStore(endpoint) { store in
                var versions: [Int] = []
                let rows = try await store.client.query("SELECT version FROM schema_migrations ORDER BY version")
                for try await version in rows.decode(Int.self) { versions.append(version) }
                return versions
            }
            #expect(applied == PostgresTaskStore.migrations.map(\.version))
        }
    }

    // MARK: Selecting the store

    @Test func postgresURLsAreParsedAndNeverShowThePassword() throws {
        let endpoint = try PostgresEndpoint(url: "postgres://i2v:s%3Acret@db.internal:6543/tasks?sslmode=require")
        #expect(endpoint.host == "db.internal" && endpoint.port == 6543)
        #expect(endpoint.username == "i2v" && endpoint.password == "s:cret" && endpoint.database == "tasks")
        #expect(endpoint.tlsMode == .require)
        #expect(!endpoint.description.contains("cret"))
        let defaults = try PostgresEndpoint(url: "postgresql://me@localhost")
        #expect(defaults.port == 5432 && defaults.database == "me" && defaults.password == nil && defaults.tlsMode == .prefer)
        #expect(throws: ConfigurationProblem.self) { try PostgresEndpoint(url: "mysql://x@y/z") }
        #expect(throws: ConfigurationProblem.self) { try PostgresEndpoint(url: "postgres://x@y/z?sslmode=sometimes") }
    }

    /// A database that cannot be reached stops the start with a message naming it (and not its password).
    @Test func anUnreachableDatabaseIsAClearStartupError() async throws {
        let directory = try TemporaryDirectory()
        // Nothing listens on port 1 of the loopback: the connection is refused at once.
        let url = "postgres://i2v:hunter2-secret@127.0.0.1:1/tasks?sslmode=disable"
        do {
            _ = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(), ["i2v.databaseUrl": .init(stringLiteral: url)])
            Issue.record("the app started on an unreachable database")
        } catch let problem as ConfigurationProblem {
            #expect(problem.description.contains("127.0.0.1:1/tasks"))
            #expect(!problem.description.contains("hunter2"))
        }
    }

    /// The whole service on PostgreSQL: the pool runs as one of its services, `/ready` pings the store,
    /// and a submitted task runs to the end.
    @Test func theServiceRunsOnPostgres() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let directory = try TemporaryDirectory()
            let url = try TestCluster.url(database: endpoint.database)
            let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(), ["i2v.databaseUrl": .init(stringLiteral: url)])
            try await withImageServer { base in
                try await app.test(.router) { client in
                    #expect(try await client.execute(uri: "/ready", method: .get).status == .ok)
                    let id = try await client.submit(imageURL: "\(base)/image.png")
                    let done = try await client.waitFor(id, status: "Succeed")
                    #expect(done["status"] as? String == "Succeed")
                }
            }
            // What the service recorded is in the database, not in the data dir.
            #expect(!FileManager.default.fileExists(atPath: directory.url.appending(path: "tasks.sqlite").path))
            let tasks = try await withPostgresStore(endpoint) { try await $0.counts() }
            #expect(tasks == QueueCounts(queued: 0, running: 0))
        }
    }
}
