import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import PostgresNIO
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// Several nodes on one store: each running task is held under its node's lease, only that node may record
/// its end, and a lease that runs out gives the task back to the queue (or fails it) from any node.
@Suite struct LeaseTests {
    static let lease = Duration.seconds(30)

    @Test(arguments: QueueKind.allCases)
    func onlyTheHoldingNodeRenewsRecordsAndEndsATask(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            for id in ["a", "b"] { try await store.enqueue(TaskStoreTests.record(id), maxQueued: 10) }
            let a = try #require(try await store.claimNext(node: "node-a", lease: Self.lease))
            let b = try #require(try await store.claimNext(node: "node-b", lease: Self.lease))
            #expect(a.lease?.node == "node-a" && b.lease?.node == "node-b")
            #expect(try #require(a.lease).expiresAt > Date().addingTimeInterval(20))

            #expect(try await store.renewLeases(node: "node-a", ids: ["a", "b", "gone"], lease: .seconds(90)) == ["a"])
            #expect(try #require(try await store.task(id: "a")?.lease).expiresAt > Date().addingTimeInterval(80))
            #expect(try await store.renewLeases(node: "node-a", ids: [], lease: Self.lease).isEmpty)

            // node-a cannot touch node-b's task.
            try await store.recordProgress(id: "b", node: "node-a", step: 9, total: 30)
            #expect(try await store.task(id: "b")?.progressStep == 0)
            #expect(try await store.finish(id: "b", node: "node-a", outcome: .failed(reason: "x")) == .notRunning)
            #expect(try await store.requeue(id: "b", node: "node-a", maxAttempts: 5, reason: "x", countAttempt: true) == .notRunning)
            #expect(try await store.task(id: "b")?.status == .inProgress)
            try await store.recordProgress(id: "b", node: "node-b", step: 9, total: 30)
            #expect(try await store.task(id: "b")?.progressStep == 9)
            #expect(try await store.finish(id: "b", node: "node-b", outcome: .succeeded(TaskStoreTests.result)) == .ended(.succeed))
            #expect(try await store.task(id: "b")?.lease == nil)
        }
    }

    @Test(arguments: QueueKind.allCases)
    func expiredLeasesAreRequeuedThenFailedAndTheOldNodeCannotFinish(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            try await store.enqueue(TaskStoreTests.record("t"), maxQueued: 10)
            try await store.enqueue(TaskStoreTests.record("live"), maxQueued: 10)
            _ = try await store.claimNext(node: "node-a", lease: .seconds(5))
            _ = try await store.claimNext(node: "node-b", lease: .seconds(600))
            #expect(try await store.requeueExpiredLeases(maxAttempts: 2, now: Date()).isEmpty)

            // Later than node-a's lease, earlier than node-b's: only node-a's task is taken back.
            let later = Date().addingTimeInterval(60)
            #expect(try await store.requeueExpiredLeases(maxAttempts: 2, now: later) == ["t": .requeued])
            let requeued = try #require(try await store.task(id: "t"))
            #expect(requeued.status == .inQueue && requeued.lease == nil && requeued.attempts == 1)
            #expect(try await store.task(id: "live")?.status == .inProgress)

            // Claimed again by node-c before node-a comes back from its partition: node-a's result no longer
            // counts, and its heartbeat finds the task gone.
            #expect(try await store.claimNext(node: "node-c", lease: .seconds(5))?.id == "t")
            #expect(try await store.finish(id: "t", node: "node-a", outcome: .succeeded(TaskStoreTests.result)) == .notRunning)
            #expect(try await store.renewLeases(node: "node-a", ids: ["t"], lease: Self.lease).isEmpty)

            // node-c's lease also runs out: the second attempt was the last.
            let outcomes = try await store.requeueExpiredLeases(maxAttempts: 2, now: later)
            guard case .failed(let reason) = outcomes["t"] else {
                Issue.record("expected the task to fail, got \(outcomes)")
                return
            }
            #expect(reason.contains("node-c") && reason.contains("2 attempts"))
            #expect(try await store.task(id: "t")?.status == .failed)
        }
    }

    /// A node cut off from the store for longer than its lease, whose task nobody claimed meanwhile: its
    /// heartbeat takes the task back, or its result is recorded, whichever reaches the store first. A
    /// failure from that attempt does not end the task.
    @Test(arguments: QueueKind.allCases)
    func aTaskTakenFromACutOffNodeIsItsOwnAgainUntilAnotherClaimsIt(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            for id in ["beat", "result", "failure"] {
                try await store.enqueue(TaskStoreTests.record(id), maxQueued: 10)
                _ = try await store.claimNext(node: "node-a", lease: .seconds(5))
            }
            let later = Date().addingTimeInterval(60)
            #expect(try await store.requeueExpiredLeases(maxAttempts: 3, now: later).count == 3)

            #expect(try await store.renewLeases(node: "node-a", ids: ["beat"], lease: Self.lease) == ["beat"])
            let back = try #require(try await store.task(id: "beat"))
            #expect(back.status == .inProgress && back.lease?.node == "node-a" && back.attempts == 1)

            #expect(try await store.finish(id: "result", node: "node-a", outcome: .succeeded(TaskStoreTests.result)) == .ended(.succeed))
            #expect(try await store.task(id: "result")?.result == TaskStoreTests.result)

            #expect(try await store.finish(id: "failure", node: "node-a", outcome: .failed(reason: "lost")) == .notRunning)
            #expect(try await store.task(id: "failure")?.status == .inQueue)
            // Another node's result for it never counts.
            #expect(try await store.finish(id: "failure", node: "node-b", outcome: .succeeded(TaskStoreTests.result)) == .notRunning)
        }
    }

    /// A restarted node (same name) takes back its own tasks at once; another node's are left to their lease.
    @Test(arguments: QueueKind.allCases)
    func recoveryTakesBackOnlyTheNodesOwnTasks(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            for id in ["mine", "theirs"] { try await store.enqueue(TaskStoreTests.record(id), maxQueued: 10) }
            _ = try await store.claimNext(node: "node-a", lease: Self.lease)
            _ = try await store.claimNext(node: "node-b", lease: Self.lease)
            #expect(try await store.recoverInterrupted(node: "node-a", maxAttempts: 2) == ["mine": .requeued])
            #expect(try await store.task(id: "mine")?.status == .inQueue)
            #expect(try await store.task(id: "theirs")?.status == .inProgress)
        }
    }

    /// A running task its client cancelled ends Cancelled when its node's lease runs out, never requeued.
    @Test(arguments: QueueKind.allCases)
    func anExpiredCancelledTaskEndsCancelled(_ kind: QueueKind) async throws {
        try await withQueue(kind) { store in
            try await store.enqueue(TaskStoreTests.record("c"), maxQueued: 10)
            _ = try await store.claimNext(node: "node-a", lease: .seconds(5))
            #expect(try await store.cancel(id: "c", ownerKeyHash: "owner") == .cancelRequested)
            #expect(try await store.requeueExpiredLeases(maxAttempts: 5, now: Date().addingTimeInterval(60)) == ["c": .cancelled])
            #expect(try await store.task(id: "c")?.status == .cancelled)
        }
    }

    /// Two reapers at once (two nodes) over the same expired tasks: each task is taken back exactly once.
    @Test(arguments: QueueKind.allCases)
    func concurrentReapersTakeEachTaskOnce(_ kind: QueueKind) async throws {
        try await withQueueDatabase(kind) { database in
            try await database.withQueue { first in
                try await database.withQueue { second in
                    for index in 0..<8 { try await first.enqueue(TaskStoreTests.record("r\(index)"), maxQueued: 100) }
                    for _ in 0..<8 { _ = try await first.claimNext(node: "gone", lease: .seconds(1)) }
                    let later = Date().addingTimeInterval(60)
                    let reaped = try await withThrowingTaskGroup(of: [String: RequeueOutcome].self) { group in
                        for store in [first, second, first, second] {
                            group.addTask { try await store.requeueExpiredLeases(maxAttempts: 5, now: later) }
                        }
                        var all: [String] = []
                        for try await outcomes in group {
                            #expect(outcomes.values.allSatisfy { $0 == .requeued })
                            all += outcomes.keys
                        }
                        return all
                    }
                    #expect(reaped.sorted() == (0..<8).map { "r\($0)" })
                    #expect(try await second.counts() == QueueCounts(queued: 8, running: 0))
                }
            }
        }
    }

    /// A key's submit rate is one bucket in the store, however many API nodes (stores) it reaches.
    @Test(arguments: StoreKind.allCases)
    func theSubmitRateIsSharedByEveryNode(_ kind: StoreKind) async throws {
        try await withStoreDatabase(kind) { database in
            try await database.withStore { first in
                try await database.withStore { second in
                    let now = Date()
                    var answers: [Int?] = []
                    for index in 0..<4 {
                        let store = index.isMultiple(of: 2) ? first : second
                        answers.append(try await store.takeSubmitToken(owner: "k", perMinute: 3, now: now))
                    }
                    // Three a minute: one token every 20 s.
                    #expect(answers == [nil, nil, nil, 20])
                    #expect(try await second.takeSubmitToken(owner: "other", perMinute: 3, now: now) == nil)
                    #expect(try await first.takeSubmitToken(owner: "k", perMinute: 3, now: now.addingTimeInterval(10)) == 10)
                    #expect(try await second.takeSubmitToken(owner: "k", perMinute: 3, now: now.addingTimeInterval(20)) == nil)
                    #expect(try await first.takeSubmitToken(owner: "k", perMinute: 0, now: now) == nil)
                }
            }
        }
    }

    /// Enqueues and cancels notify the channel, so a listening node wakes without polling.
    @Test func enqueueRequeueCancelAndDeleteNotifyListeners() async throws {
        try await withFreshPostgresDatabase { endpoint in
            try await withPostgresStore(endpoint) { store in
                let connection = try await PostgresConnection.connect(
                    configuration: try endpoint.connectionConfiguration(),
                    id: 9,
                    logger: TestCluster.logger
                )
                defer { Task { try? await connection.close() } }
                let events: [String] = try await connection.listen(on: PostgresTaskStore.notificationChannel) { notifications -> [String] in
                    try await store.enqueue(TaskStoreTests.record("n"), maxQueued: 10)
                    _ = try await store.claimNext(node: "node-a", lease: Self.lease)
                    _ = try await store.requeue(id: "n", node: "node-a", maxAttempts: 5, reason: "x", countAttempt: false)
                    _ = try await store.claimNext(node: "node-a", lease: Self.lease)
                    _ = try await store.cancel(id: "n", ownerKeyHash: "owner")
                    // Deleting a running task stops it as a cancel does: its node is told at once, not at
                    // its next poll.
                    try await store.enqueue(TaskStoreTests.record("d"), maxQueued: 10)
                    _ = try await store.claimNext(node: "node-a", lease: Self.lease)
                    let deleted = try await (store as any TaskListing).deleteTask(id: "d", ownerKeyHash: "owner")
                    guard case .stopping = deleted else {
                        Issue.record("deleting a running task answered \(deleted)")
                        return []
                    }
                    var received: [String] = []
                    for try await notification in notifications {
                        received.append(notification.payload)
                        if received.count == 5 { break }
                    }
                    return received
                }
                #expect(events == ["queued", "queued", "cancel", "queued", "cancel"])
            }
        }
    }

    /// The database going away: calls fail within the store's deadline with `StoreUnavailable` (not a hang,
    /// not a crash), and work again once it is back. The deadline is the subject, so it has its own setting,
    /// long enough for the calls before the outage on a busy machine.
    @Test func aDatabaseThatGoesAwayFailsFastAndRecovers() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let store = try await PostgresTaskStore(endpoint: endpoint, maximumConnections: 4, timeout: .seconds(15), logger: TestCluster.logger)
            try await withThrowingTaskGroup { group in
                group.addTask { await store.client.run() }
                defer { group.cancelAll() }
                try await store.enqueue(TaskStoreTests.record("before"), maxQueued: 10)
                try await setConnections(allowed: false, endpoint)
                await #expect(throws: StoreUnavailable.self) { try await store.enqueue(TaskStoreTests.record("during"), maxQueued: 10) }
                await #expect(throws: StoreUnavailable.self) { try await store.task(id: "before") }
                try await setConnections(allowed: true, endpoint)
                // The pool retries with a growing pause (up to a minute) while the database is away.
                let back = await eventually("the store answering again", timeout: .seconds(300)) { (try? await store.ping()) != nil }
                #expect(back)
                #expect(try await store.task(id: "before")?.status == .inQueue)
                #expect(try await store.task(id: "during") == nil)
            }
        }
    }
}

/// Stands for the database going away and coming back, for one test's database only: new connections are
/// refused and the open ones are closed by the server (the other tests share the cluster).
func setConnections(allowed: Bool, _ endpoint: PostgresEndpoint) async throws {
    try await withPostgresConnection(endpoint.with(database: "postgres")) { connection in
        let name = endpoint.database
        try await connection.query("ALTER DATABASE \(unescaped: name) ALLOW_CONNECTIONS \(unescaped: allowed ? "true" : "false")", logger: TestCluster.logger)
        if !allowed {
            try await connection.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = \(name) AND pid <> pg_backend_pid()",
                logger: TestCluster.logger
            )
        }
    }
}
