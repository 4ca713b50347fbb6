import Foundation
import GRDB
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The outbox against both stores (PostgreSQL on the test cluster: skipped without one, a failure under
/// `I2V_TEST_STRICT=1`).
@Suite struct WebhookOutboxStoreTests {
    typealias Store = any TaskStore & TaskListing & WebhookOutbox

    static let node = "node-a"
    static let lease = Duration.seconds(30)
    static let result = TaskResult(videoName: "v", width: 16, height: 16, numFrames: 5, fps: 16, inferenceSeconds: 1, encodeSeconds: 0)

    static func record(_ id: String, events: Set<WebhookEvent>? = WebhookEvent.defaults, owner: String = "owner") -> TaskRecord {
        var task = TaskStoreTests.record(id, owner: owner)
        task.webhook = events.map { WebhookSubscription(url: "https://receiver.example/hooks/\(id)", events: $0) }
        return task
    }

    /// The body names the event and the task, so a test can tell which message it is looking at.
    static let render: @Sendable (TaskRecord, WebhookEvent) throws -> String = { task, event in
        #"{"event":"\#(event.rawValue)","task":"\#(task.id)","status":"\#(task.status.rawValue)"}"#
    }

    static func withOutboxStore(_ kind: StoreKind, _ body: (Store) async throws -> Void) async throws {
        try await withStore(kind) { store in
            try await body(try #require(store as? Store))
        }
    }

    static func events(_ messages: [WebhookMessage]) -> [String] {
        messages.map { "\($0.taskID):\($0.event.rawValue)" }.sorted()
    }

    @Test(arguments: StoreKind.allCases)
    func eventsAreRecordedOnceWhenTheyHappenAndOnlyTheSubscribedOnes(_ kind: StoreKind) async throws {
        try await Self.withOutboxStore(kind) { store in
            let now = Date()
            try await store.enqueue(Self.record("all", events: Set(WebhookEvent.allCases)), maxQueued: 10)
            try await store.enqueue(Self.record("ends"), maxQueued: 10)
            try await store.enqueue(Self.record("none", events: nil), maxQueued: 10)
            try await store.enqueue(Self.record("done-only", events: [.completed]), maxQueued: 10)
            try await store.enqueue(Self.record("queued"), maxQueued: 10)
            #expect(
                try await store.task(id: "all")?.webhook == WebhookSubscription(url: "https://receiver.example/hooks/all", events: Set(WebhookEvent.allCases)))
            #expect(try await store.task(id: "none")?.webhook == nil)
            // Nothing has happened yet.
            #expect(try await store.collectWebhookEvents(limit: 100, now: now, render: Self.render).isEmpty)

            _ = try await store.claimNext(node: Self.node, lease: Self.lease)  // all
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)  // ends
            let started = try await store.collectWebhookEvents(limit: 100, now: now, render: Self.render)
            #expect(Self.events(started) == ["all:started"])
            let message = try #require(started.first)
            #expect(message.id.hasPrefix("msg_") && message.id.count == 36)
            #expect(message.state == .pending && message.attempts == 0 && message.url == "https://receiver.example/hooks/all")
            #expect(message.body == #"{"event":"started","task":"all","status":"InProgress"}"#)
            // Recorded once: a second collection finds nothing new.
            #expect(try await store.collectWebhookEvents(limit: 100, now: now, render: Self.render).isEmpty)

            try await store.finish(id: "all", node: Self.node, outcome: .succeeded(Self.result))
            try await store.finish(id: "ends", node: Self.node, outcome: .failed(reason: "boom"))
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)  // none
            try await store.finish(id: "none", node: Self.node, outcome: .succeeded(Self.result))
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)  // done-only
            try await store.finish(id: "done-only", node: Self.node, outcome: .failed(reason: "boom"))
            #expect(try await store.cancel(id: "queued", ownerKeyHash: "owner") == .cancelledQueued)

            let ended = try await store.collectWebhookEvents(limit: 100, now: now, render: Self.render)
            // done-only failed, which it did not ask to hear about; queued never started.
            #expect(Self.events(ended) == ["all:completed", "ends:failed", "queued:cancelled"])
            #expect(try await store.collectWebhookEvents(limit: 100, now: now, render: Self.render).isEmpty)
            #expect(try await store.webhookMessages(taskID: "all").map(\.event) == [.started, .completed])
            #expect(try await store.pendingWebhookMessageCount() == 4)
        }
    }

    /// A task that started and ended between two collections gets both events, and a lease expiry that
    /// fails the task (any node's reaper) is reported like any other ending.
    @Test(arguments: StoreKind.allCases)
    func eventsFromEveryPathThatEndsATask(_ kind: StoreKind) async throws {
        try await Self.withOutboxStore(kind) { store in
            try await store.enqueue(Self.record("fast", events: Set(WebhookEvent.allCases)), maxQueued: 10)
            try await store.enqueue(Self.record("lost"), maxQueued: 10)
            _ = try await store.claimNext(node: Self.node, lease: Self.lease)
            try await store.finish(id: "fast", node: Self.node, outcome: .succeeded(Self.result))
            _ = try await store.claimNext(node: Self.node, lease: .milliseconds(1))
            let reaped = try await store.requeueExpiredLeases(maxAttempts: 1, now: Date().addingTimeInterval(60))
            guard case .failed = reaped["lost"] else {
                Issue.record("expected the expired task to fail, got \(reaped)")
                return
            }
            let added = try await store.collectWebhookEvents(limit: 100, now: Date(), render: Self.render)
            #expect(Self.events(added) == ["fast:completed", "fast:started", "lost:failed"])
            #expect(try await store.webhookMessages(taskID: "lost").first?.body.contains(#""status":"Failed""#) == true)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func claimsRetriesGivingUpAndPruning(_ kind: StoreKind) async throws {
        try await Self.withOutboxStore(kind) { store in
            try await store.enqueue(Self.record("a"), maxQueued: 10)
            try await store.enqueue(Self.record("b"), maxQueued: 10)
            try await store.enqueue(Self.record("c"), maxQueued: 10)
            for id in ["a", "b", "c"] { #expect(try await store.cancel(id: id, ownerKeyHash: "owner") == .cancelledQueued) }
            let t0 = Date()
            #expect(try await store.collectWebhookEvents(limit: 100, now: t0, render: Self.render).count == 3)

            let claimed = try await store.claimWebhookMessages(limit: 2, now: t0, claim: .seconds(40))
            #expect(claimed.count == 2 && claimed.allSatisfy { $0.attempts == 1 })
            // Claimed messages are nobody else's until their claim runs out.
            let rest = try await store.claimWebhookMessages(limit: 10, now: t0, claim: .seconds(40))
            #expect(rest.count == 1 && Set(claimed.map(\.id) + rest.map(\.id)).count == 3)
            #expect(try await store.claimWebhookMessages(limit: 10, now: t0.addingTimeInterval(39), claim: .seconds(40)).isEmpty)

            let (first, second) = (claimed[0], claimed[1])
            #expect(try await store.recordWebhookAttempt(id: first.id, attempt: 1, outcome: .delivered(status: 204), now: t0))
            #expect(
                try await store.recordWebhookAttempt(
                    id: second.id, attempt: 1, outcome: .retry(at: t0.addingTimeInterval(5), error: "HTTP status 500", status: 500), now: t0))
            #expect(try await store.recordWebhookAttempt(id: rest[0].id, attempt: 1, outcome: .gaveUp(error: "refused", status: nil), now: t0))
            #expect(try await store.pendingWebhookMessageCount() == 1)

            // Not due before its retry time; then claimed again under the same id, as attempt 2.
            #expect(try await store.claimWebhookMessages(limit: 10, now: t0.addingTimeInterval(4), claim: .seconds(40)).isEmpty)
            let again = try await store.claimWebhookMessages(limit: 10, now: t0.addingTimeInterval(5), claim: .seconds(40))
            #expect(again.map(\.id) == [second.id] && again.first?.attempts == 2)
            #expect(again.first?.lastError == "HTTP status 500" && again.first?.lastStatus == 500)
            #expect(again.first?.body == second.body)
            // A node whose claim ran out (attempt 1) cannot overwrite what the current claim records.
            #expect(try await store.recordWebhookAttempt(id: second.id, attempt: 1, outcome: .delivered(status: 200), now: t0) == false)
            #expect(try await store.recordWebhookAttempt(id: second.id, attempt: 2, outcome: .delivered(status: 200), now: t0.addingTimeInterval(6)))
            #expect(try await store.recordWebhookAttempt(id: second.id, attempt: 2, outcome: .delivered(status: 200), now: t0) == false)

            var states: [WebhookMessage?] = []
            for message in [first, second, rest[0]] { states.append(try await store.webhookMessages(taskID: message.taskID).first) }
            #expect(states.map { $0?.state } == [.delivered, .delivered, .gaveUp])
            #expect(states[0]?.lastStatus == 204 && states[0]?.finishedAt != nil)
            #expect(try await store.pendingWebhookMessageCount() == 0)

            #expect(try await store.pruneWebhookMessages(finishedBefore: t0) == 0)
            #expect(try await store.pruneWebhookMessages(finishedBefore: t0.addingTimeInterval(1)) == 2)
            #expect(try await store.pruneWebhookMessages(finishedBefore: t0.addingTimeInterval(60)) == 1)
            // The task rows were marked: pruning never brings an event back.
            #expect(try await store.collectWebhookEvents(limit: 100, now: t0, render: Self.render).isEmpty)
        }
    }

    /// Deleting a queued task with a webhook cancels it first, so its cancelled event is in the outbox when
    /// the row goes; a task without a webhook is left to `deleteTask` alone.
    @Test(arguments: StoreKind.allCases)
    func deletionRecordsTheCancelledEventFirst(_ kind: StoreKind) async throws {
        try await Self.withOutboxStore(kind) { store in
            try await store.enqueue(Self.record("hooked"), maxQueued: 10)
            try await store.enqueue(Self.record("plain", events: nil), maxQueued: 10)
            let render = Self.render
            #expect(try await store.settleWebhookEventsBeforeDeletion(id: "hooked", ownerKeyHash: "someone else", now: Date(), render: render) == .nothing)
            #expect(try await store.settleWebhookEventsBeforeDeletion(id: "plain", ownerKeyHash: "owner", now: Date(), render: render) == .nothing)
            #expect(try await store.task(id: "plain")?.status == .inQueue)
            #expect(
                try await store.settleWebhookEventsBeforeDeletion(id: "hooked", ownerKeyHash: "owner", now: Date(), render: render)
                    == .recorded(cancelledQueued: true))
            guard case .removed(let removed) = try await store.deleteTask(id: "hooked", ownerKeyHash: "owner") else {
                Issue.record("the cancelled task was not removed")
                return
            }
            #expect(removed.status == .cancelled && removed.reason == WebhookEventRules.deletedReason)
            let messages = try await store.webhookMessages(taskID: "hooked")
            #expect(messages.map(\.event) == [.cancelled] && messages.first?.body.contains(#""status":"Cancelled""#) == true)
            #expect(try await store.collectWebhookEvents(limit: 100, now: Date(), render: render).isEmpty)
        }
    }

    /// Two API nodes collecting at once record each event once.
    @Test(arguments: StoreKind.allCases)
    func concurrentCollectorsRecordEachEventOnce(_ kind: StoreKind) async throws {
        try await withStoreDatabase(kind) { database in
            try await database.withStore { first in
                try await database.withStore { second in
                    let a = try #require(first as? Store), b = try #require(second as? Store)
                    for index in 0..<40 {
                        try await a.enqueue(Self.record("t\(index)"), maxQueued: 100)
                        _ = try await a.cancel(id: "t\(index)", ownerKeyHash: "owner")
                    }
                    async let one = a.collectWebhookEvents(limit: 7, now: Date(), render: Self.render)
                    async let two = b.collectWebhookEvents(limit: 7, now: Date(), render: Self.render)
                    var all = try await one + two
                    while true {
                        let more = try await a.collectWebhookEvents(limit: 7, now: Date(), render: Self.render)
                        if more.isEmpty { break }
                        all += more
                    }
                    #expect(all.count == 40 && Set(all.map(\.taskID)).count == 40)
                    #expect(try await a.pendingWebhookMessageCount() == 40)
                }
            }
        }
    }

    /// The collection reads the partial index, which holds none of the queued tasks: its cost does not grow
    /// with the queue.
    @Test func sqliteCollectionUsesThePartialIndex() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.url.appending(path: "tasks.sqlite").path
        let store = try SQLiteTaskStore(path: path)
        for index in 0..<2_000 { try await store.enqueue(Self.record("q\(index)"), maxQueued: 10_000) }
        let plan = try await store.database.read { db in
            try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + SQLiteTaskStore.webhookDueSQL, arguments: [500]).map { $0["detail"] as String }
        }
        #expect(plan.contains { $0.contains("tasks_webhook_due") }, "\(plan)")
        let indexed = try await store.database.read { db in
            try Int.fetchOne(
                db,
                sql:
                    "SELECT COUNT(*) FROM tasks INDEXED BY tasks_webhook_due WHERE webhook_url IS NOT NULL AND status <> 'InQueue' AND (webhook_started_recorded = 0 OR webhook_end_recorded = 0)"
            )
        }
        #expect(indexed == 0)
    }
}
