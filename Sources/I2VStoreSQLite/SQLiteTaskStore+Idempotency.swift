import Foundation
import GRDB
import I2VCore

extension SQLiteTaskStore {
    public func reserveIdempotencyKey(_ key: IdempotencyKey, taskID: String, validAfter: Date, now: Date) async throws -> IdempotencyReservation {
        try await database.write { db in
            try db.execute(sql: "DELETE FROM idempotency_keys WHERE created_at < ?", arguments: [validAfter.timeIntervalSince1970])
            try db.execute(
                sql: """
                    INSERT INTO idempotency_keys (owner_key_hash, key, request_hash, task_id, created_at) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (owner_key_hash, key) DO NOTHING
                    """,
                arguments: [key.owner, key.key, key.requestHash, taskID, now.timeIntervalSince1970]
            )
            guard db.changesCount == 0 else { return .reserved }
            let row = try Row.fetchOne(
                db,
                sql: "SELECT task_id, request_hash, state, created_at FROM idempotency_keys WHERE owner_key_hash = ? AND key = ?",
                arguments: [key.owner, key.key]
            )
            guard let row else { return .reserved }
            return .taken(
                taskID: row["task_id"],
                requestHash: row["request_hash"],
                queued: (row["state"] as String) == "queued",
                since: Date(timeIntervalSince1970: row["created_at"])
            )
        }
    }

    public func completeIdempotencyKey(_ key: IdempotencyKey, taskID: String) async throws {
        try await database.write { db in
            try db.execute(
                sql: "UPDATE idempotency_keys SET state = 'queued' WHERE owner_key_hash = ? AND key = ? AND task_id = ?",
                arguments: [key.owner, key.key, taskID]
            )
        }
    }

    public func releaseIdempotencyKey(_ key: IdempotencyKey, taskID: String) async throws {
        try await database.write { db in
            try db.execute(
                sql: "DELETE FROM idempotency_keys WHERE owner_key_hash = ? AND key = ? AND task_id = ? AND state = 'pending'",
                arguments: [key.owner, key.key, taskID]
            )
        }
    }
}
