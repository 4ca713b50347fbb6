import Foundation
import I2VCore
import PostgresNIO

extension PostgresTaskStore {
    public func reserveIdempotencyKey(_ key: IdempotencyKey, taskID: String, validAfter: Date, now: Date) async throws -> IdempotencyReservation {
        try await transaction { connection in
            try await connection.query(
                "DELETE FROM idempotency_keys WHERE created_at < \(validAfter.timeIntervalSince1970)",
                logger: logger
            )
            // ON CONFLICT waits for a concurrent insert of the same key to commit, so of two submits racing
            // for one key exactly one inserts and the other reads its row.
            let inserted = try await connection.query(
                """
                INSERT INTO idempotency_keys (owner_key_hash, key, request_hash, task_id, created_at)
                VALUES (\(key.owner), \(key.key), \(key.requestHash), \(taskID), \(now.timeIntervalSince1970))
                ON CONFLICT (owner_key_hash, key) DO NOTHING
                RETURNING task_id
                """,
                logger: logger
            )
            for try await _ in inserted.decode(String.self) { return .reserved }
            let rows = try await connection.query(
                """
                SELECT task_id, request_hash, state, created_at FROM idempotency_keys
                WHERE owner_key_hash = \(key.owner) AND key = \(key.key)
                """,
                logger: logger
            )
            for try await (task, hash, state, created) in rows.decode((String, String, String, Double).self) {
                return .taken(taskID: task, requestHash: hash, queued: state == "queued", since: Date(timeIntervalSince1970: created))
            }
            return .reserved
        }
    }

    public func completeIdempotencyKey(_ key: IdempotencyKey, taskID: String) async throws {
        try await withDeadline {
            try await client.query(
                """
                UPDATE idempotency_keys SET state = 'queued'
                WHERE owner_key_hash = \(key.owner) AND key = \(key.key) AND task_id = \(taskID)
                """,
                logger: logger
            )
        }
    }

    public func releaseIdempotencyKey(_ key: IdempotencyKey, taskID: String) async throws {
        try await withDeadline {
            try await client.query(
                """
                DELETE FROM idempotency_keys
                WHERE owner_key_hash = \(key.owner) AND key = \(key.key) AND task_id = \(taskID) AND state = 'pending'
                """,
                logger: logger
            )
        }
    }
}
