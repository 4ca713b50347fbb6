import Synchronization

/// Queue positions for status polls. Counting the tasks ahead on every poll costs time in proportion to the
/// queue's depth, and clients poll often while a deep queue drains; instead this node reads the queue's order
/// (the `seq` of every queued task) from the store at most once per `maxAge`, shared by every poll, and a
/// task's position is a binary search in it. Each model has its own queue (a node claims only the models it
/// serves), so positions, and the orders read, are per model.
///
/// A position can be up to `maxAge` old: a task claimed or cancelled ahead since still counts. A task the
/// order does not hold (submitted or requeued after it was read) makes it be read again at once, so a new
/// task never waits for a position; one that is in neither (it left the queue meanwhile) is counted exactly.
package final class QueuePositions: Sendable {
    package typealias ReadOrder = @Sendable (_ model: String) async throws -> [Int64]
    package typealias CountPosition = @Sendable (_ id: String) async throws -> Int?

    private struct Order: Sendable {
        var seqs: [Int64]
        var readAt: ContinuousClock.Instant

        /// 1-based place of `seq`, by binary search (the seqs are ascending).
        func place(of seq: Int64) -> Int? {
            var low = 0
            var high = seqs.count
            while low < high {
                let middle = (low + high) / 2
                if seqs[middle] < seq { low = middle + 1 } else { high = middle }
            }
            return low < seqs.count && seqs[low] == seq ? low + 1 : nil
        }
    }

    private struct State: Sendable {
        /// By model, lower-cased.
        var orders: [String: Order] = [:]
        /// The reads in progress: polls that need a new order while one is being read wait for that one.
        var reading: [String: Task<Order, any Error>] = [:]
    }

    package let maxAge: Duration
    private let readOrder: ReadOrder
    private let countPosition: CountPosition
    private let state = Mutex(State())

    package init(maxAge: Duration = .seconds(1), readOrder: @escaping ReadOrder, countPosition: @escaping CountPosition) {
        self.maxAge = maxAge
        self.readOrder = readOrder
        self.countPosition = countPosition
    }

    package convenience init(store: any TaskQueue & TaskListing, maxAge: Duration = .seconds(1)) {
        self.init(
            maxAge: maxAge,
            readOrder: { try await store.queueSeqs(model: $0) },
            countPosition: { try await store.queuePosition(id: $0) }
        )
    }

    /// The place (1 = next to run) among `model`'s queued tasks of the queued task `id`, whose `seq` the
    /// caller has just read.
    package func position(of id: String, seq: Int64, model: String) async throws -> Int? {
        let model = model.lowercased()
        let now = ContinuousClock.now
        if let order = state.withLock({ $0.orders[model] }), now - order.readAt < maxAge, let place = order.place(of: seq) {
            return place
        }
        if let place = try await freshOrder(model).place(of: seq) {
            return place
        }
        return try await countPosition(id)
    }

    private func freshOrder(_ model: String) async throws -> Order {
        let reading = state.withLock { state in
            if let reading = state.reading[model] { return reading }
            let reading = Task { [readOrder] in
                let readAt = ContinuousClock.now
                return Order(seqs: try await readOrder(model), readAt: readAt)
            }
            state.reading[model] = reading
            return reading
        }
        let result = await reading.result
        state.withLock { state in
            if state.reading[model] == reading { state.reading[model] = nil }
            if case .success(let order) = result, state.orders[model].map({ order.readAt > $0.readAt }) ?? true {
                state.orders[model] = order
            }
        }
        return try result.get()
    }
}
