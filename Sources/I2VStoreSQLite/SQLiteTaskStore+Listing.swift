import Foundation
import GRDB
import I2VCore

extension SQLiteTaskStore: TaskListing {
    public func listTasks(ownerKeyHash: String, after: String?, limit: Int, order: TaskListOrder) async throws -> TaskListingResult {
        try await database.read { db in
            // Without a cursor the bound lies beyond every seq (AUTOINCREMENT starts at 1).
            var bound = order == .ascending ? Int64(0) : Int64.max
            if let after {
                guard
                    let seq = try Int64.fetchOne(
                        db,
                        sql: "SELECT seq FROM tasks WHERE id = ? AND owner_key_hash = ?",
                        arguments: [after, ownerKeyHash]
                    )
                else { return .unknownCursor }
                bound = seq
            }
            let (comparison, direction) = order == .ascending ? (">", "ASC") : ("<", "DESC")
            // One more row than asked for tells whether another page follows.
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT t.*,
                        CASE WHEN t.status = 'InQueue' THEN
                            (SELECT COUNT(*) FROM tasks AS ahead
                                WHERE ahead.status = 'InQueue' AND ahead.seq <= t.seq AND lower(ahead.model) = lower(t.model))
                        END AS queue_position
                    FROM tasks AS t
                    WHERE t.owner_key_hash = ? AND t.seq \(comparison) ?
                    ORDER BY t.seq \(direction)
                    LIMIT ?
                    """,
                arguments: [ownerKeyHash, bound, limit + 1]
            )
            let listed = rows.prefix(limit).map { row in
                ListedTask(task: Self.record(row), queuePosition: row["queue_position"])
            }
            return .page(Array(listed), hasMore: rows.count > limit)
        }
    }

    public func polledTask(id: String) async throws -> PolledTask? {
        try await database.read { db in
            try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM tasks WHERE id = ?"), arguments: [id]).map { row in
                let task = Self.record(row)
                return PolledTask(task: task, queueSeq: task.status == .inQueue ? row["seq"] : nil)
            }
        }
    }

    public func queueSeqs(model: String?) async throws -> [Int64] {
        try await database.read { db in
            try Int64.fetchAll(
                db.cachedStatement(sql: "SELECT seq FROM tasks WHERE status = 'InQueue' AND (? IS NULL OR lower(model) = ?) ORDER BY seq"),
                arguments: [model?.lowercased(), model?.lowercased()]
            )
        }
    }

    public func deleteTask(id: String, ownerKeyHash: String) async throws -> TaskDeletionOutcome {
        try await database.write { db in
            let task = try Row.fetchOne(db, sql: "SELECT * FROM tasks WHERE id = ?", arguments: [id]).map(Self.record)
            let decision = try Self.apply(TaskStateMachine.delete(try Self.state(db, id: id), owner: ownerKeyHash), id: id, db)
            switch (decision, task) {
            case (.removed, let task?): return .removed(task)
            case (.stopping, let task?): return .stopping(task)
            default: return .notFound
            }
        }
    }
}
