import Foundation
import I2VCore
import PostgresNIO

extension PostgresTaskStore: TaskListing {
    public func listTasks(ownerKeyHash: String, after: String?, limit: Int, order: TaskListOrder) async throws -> TaskListingResult {
        // Without a cursor the bound lies beyond every seq (BIGSERIAL starts at 1).
        var bound = order == .ascending ? 0 : Int.max
        if let after {
            var seq: Int?
            let rows = try await client.query(
                "SELECT seq FROM tasks WHERE id = \(after) AND owner_key_hash = \(ownerKeyHash)",
                logger: logger
            )
            for try await value in rows.decode(Int.self) { seq = value }
            guard let seq else { return .unknownCursor }
            bound = seq
        }
        let (comparison, direction) = order == .ascending ? (">", "ASC") : ("<", "DESC")
        // One more row than asked for tells whether another page follows.
        let rows = try await client.query(
            """
            SELECT t.*,
                CASE WHEN t.status = 'InQueue' THEN
                    (SELECT count(*) FROM tasks AS ahead
                        WHERE ahead.status = 'InQueue' AND ahead.seq <= t.seq AND lower(ahead.model) = lower(t.model))
                END AS queue_position
            FROM tasks AS t
            WHERE t.owner_key_hash = \(ownerKeyHash) AND t.seq \(unescaped: comparison) \(bound)
            ORDER BY t.seq \(unescaped: direction)
            LIMIT \(limit + 1)
            """,
            logger: logger
        )
        var listed: [ListedTask] = []
        var more = false
        for try await row in rows {
            guard listed.count < limit else {
                more = true
                continue
            }
            let columns = row.makeRandomAccess()
            listed.append(ListedTask(task: try Self.record(columns), queuePosition: try columns["queue_position"].decode(Int?.self)))
        }
        return .page(listed, hasMore: more)
    }

    public func polledTask(id: String) async throws -> PolledTask? {
        try await withDeadline {
            let rows = try await client.query("SELECT * FROM tasks WHERE id = \(id)", logger: logger)
            for try await row in rows {
                let columns = row.makeRandomAccess()
                let task = try Self.record(columns)
                return PolledTask(task: task, queueSeq: task.status == .inQueue ? try columns["seq"].decode(Int64.self) : nil)
            }
            return nil
        }
    }

    public func queueSeqs(model: String?) async throws -> [Int64] {
        let wanted = model?.lowercased()
        return try await withDeadline {
            let rows = try await client.query(
                "SELECT seq FROM tasks WHERE status = 'InQueue' AND (\(wanted)::text IS NULL OR lower(model) = \(wanted)) ORDER BY seq",
                logger: logger
            )
            var seqs: [Int64] = []
            for try await seq in rows.decode(Int64.self) { seqs.append(seq) }
            return seqs
        }
    }

    /// FOR UPDATE: a claim that is moving the row to InProgress right now is waited for, so a running task
    /// is never deleted from under its node. A running task's node is told at once, as for a cancel.
    public func deleteTask(id: String, ownerKeyHash: String) async throws -> TaskDeletionOutcome {
        try await transaction { connection in
            let rows = try await connection.query("SELECT * FROM tasks WHERE id = \(id) FOR UPDATE", logger: self.logger)
            var found: (task: TaskRecord, state: TaskState)?
            for try await row in rows {
                let row = row.makeRandomAccess()
                found = (try Self.record(row), try Self.state(row))
            }
            let plan = TaskStateMachine.delete(found?.state, owner: ownerKeyHash)
            switch (try await Self.apply(plan, id: id, connection, logger: self.logger), found?.task) {
            case (.removed, let task?): return .removed(task)
            case (.stopping, let task?): return .stopping(task)
            default: return .notFound
            }
        }
    }
}
