import Foundation
import Synchronization
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// Status polls place a queued task by its `seq` in the queue's order, read once and shared, instead of
/// counting the queue on every poll.
@Suite struct QueuePositionsTests {
    static func enqueue(_ store: any TaskStore, _ ids: [String]) async throws {
        for id in ids { try await store.enqueue(TaskStoreTests.record(id), maxQueued: 1_000) }
    }

    @Test(arguments: StoreKind.allCases)
    func aPolledTaskCarriesItsSeqWhileQueuedAndTheOrderListsTheQueue(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            let listing = try #require(store as? any TaskStore & TaskListing)
            try await Self.enqueue(store, ["a", "b", "c"])
            let seqs = try await listing.queueSeqs()
            #expect(seqs.count == 3 && seqs == seqs.sorted() && Set(seqs).count == 3, "\(seqs)")
            let b = try #require(try await listing.polledTask(id: "b"))
            #expect(b.task.id == "b" && b.task.status == .inQueue && b.queueSeq == seqs[1])
            #expect(try await store.claimNext(node: TaskStoreTests.node, lease: TaskStoreTests.lease)?.id == "a")
            let a = try #require(try await listing.polledTask(id: "a"))
            #expect(a.task.status == .inProgress && a.queueSeq == nil)
            #expect(try await listing.queueSeqs() == Array(seqs.dropFirst()))
            #expect(try await listing.polledTask(id: "nope") == nil)
        }
    }

    @Test func concurrentPollsShareOneReadAndNewTasksAreReadAgainAtOnce() async throws {
        try await withStore(.sqlite) { store in
            let listing = try #require(store as? any TaskStore & TaskListing)
            let ids = (0..<40).map { "t\($0)" }
            try await Self.enqueue(store, ids)
            let reads = Mutex(0)
            let counts = Mutex(0)
            let positions = QueuePositions(
                maxAge: .seconds(3_600),
                readOrder: { model in
                    reads.withLock { $0 += 1 }
                    return try await listing.queueSeqs(model: model)
                },
                countPosition: { id in
                    counts.withLock { $0 += 1 }
                    return try await store.queuePosition(id: id)
                }
            )
            func place(_ id: String) async throws -> Int? {
                let polled = try #require(try await listing.polledTask(id: id))
                return try await positions.position(of: id, seq: try #require(polled.queueSeq), model: polled.task.parameters.model)
            }

            // Forty polls at once: one read of the order between them, and every task in its place.
            let places = try await withThrowingTaskGroup(of: (String, Int?).self) { group in
                for id in ids { group.addTask { (id, try await place(id)) } }
                return try await group.reduce(into: [String: Int]()) { $0[$1.0] = $1.1 }
            }
            #expect(ids.map { places[$0] } == Array(1...40))
            #expect(reads.withLock { $0 } == 1)
            #expect(counts.withLock { $0 } == 0)

            // Within maxAge the order is not read again: a claim ahead does not show yet.
            _ = try await store.claimNext(node: TaskStoreTests.node, lease: TaskStoreTests.lease)
            #expect(try await place("t1") == 2)
            #expect(reads.withLock { $0 } == 1)

            // A task submitted after the read is not in it: the order is read again for it, at once.
            try await Self.enqueue(store, ["late"])
            #expect(try await place("late") == 40)
            #expect(reads.withLock { $0 } == 2)
            #expect(try await place("t1") == 1)

            // A task in neither order (it left the queue meanwhile) is counted exactly: no longer queued.
            #expect(try await positions.position(of: "gone", seq: 1_000_000, model: "m") == nil)
            #expect(reads.withLock { $0 } == 3)
            #expect(counts.withLock { $0 } == 1)
        }
    }

    @Test func withNoMaxAgeEveryPollSeesTheQueueAsItIsNow() async throws {
        try await withStore(.sqlite) { store in
            let listing = try #require(store as? any TaskStore & TaskListing)
            try await Self.enqueue(store, ["a", "b", "c"])
            let read = ReadTask(store: listing, positions: QueuePositions(store: listing, maxAge: .zero))
            let owner = TaskStoreTests.record("c").ownerKeyHash
            #expect(try await read(id: "c", owner: owner)?.queuePosition == 3)
            _ = try await store.claimNext(node: TaskStoreTests.node, lease: TaskStoreTests.lease)
            #expect(try await read(id: "c", owner: owner)?.queuePosition == 2)
            #expect(try await read(id: "a", owner: owner)?.queuePosition == nil)
            #expect(try await read(id: "c", owner: "another owner") == nil)
        }
    }
}
