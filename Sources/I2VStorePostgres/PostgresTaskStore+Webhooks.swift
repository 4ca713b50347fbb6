import Foundation
import I2VCore
import Logging
import PostgresNIO

extension PostgresTaskStore: WebhookOutbox {
    /// Migration v4: the same schema as SQLite's (see `SQLiteTaskStore.webhookMigration`).
    package static let webhookMigration: [String] = [
        "ALTER TABLE tasks ADD COLUMN webhook_url TEXT",
        "ALTER TABLE tasks ADD COLUMN webhook_events TEXT",
        "ALTER TABLE tasks ADD COLUMN webhook_started_recorded BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE tasks ADD COLUMN webhook_end_recorded BOOLEAN NOT NULL DEFAULT FALSE",
        """
        CREATE INDEX tasks_webhook_due ON tasks (seq)
        WHERE webhook_url IS NOT NULL AND status <> 'InQueue' AND (NOT webhook_started_recorded OR NOT webhook_end_recorded)
        """,
        """
        CREATE TABLE webhook_outbox (
            seq BIGSERIAL PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            task_id TEXT NOT NULL,
            event TEXT NOT NULL,
            url TEXT NOT NULL,
            body TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts BIGINT NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            last_error TEXT,
            last_status BIGINT,
            finished_at DOUBLE PRECISION,
            UNIQUE (task_id, event)
        )
        """,
        "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending'",
        "CREATE INDEX webhook_outbox_finished ON webhook_outbox (finished_at) WHERE state <> 'pending'",
    ]

    /// SKIP LOCKED: two API nodes collecting at once take different tasks, and neither waits for a row a
    /// dispatcher is updating (it is looked at on the next tick).
    public func collectWebhookEvents(
        limit: Int,
        now: Date,
        render: @escaping @Sendable (TaskRecord, WebhookEvent) throws -> String
    ) async throws -> [WebhookMessage] {
        try await transaction { connection in
            let rows = try await connection.query(
                """
                SELECT * FROM tasks
                WHERE webhook_url IS NOT NULL AND status <> 'InQueue' AND (NOT webhook_started_recorded OR NOT webhook_end_recorded)
                    AND (status <> 'InProgress' OR NOT webhook_started_recorded)
                ORDER BY seq LIMIT \(limit)
                FOR UPDATE SKIP LOCKED
                """,
                logger: logger
            )
            var due: [PostgresRandomAccessRow] = []
            for try await row in rows { due.append(row.makeRandomAccess()) }
            var added: [WebhookMessage] = []
            for row in due {
                added += try await Self.recordWebhookEvents(connection, row: row, now: now, render: render, logger: logger)
            }
            return added
        }
    }

    public func settleWebhookEventsBeforeDeletion(
        id: String,
        ownerKeyHash: String,
        now: Date,
        render: @escaping @Sendable (TaskRecord, WebhookEvent) throws -> String
    ) async throws -> WebhookDeletionSettlement {
        try await transaction { connection in
            // FOR UPDATE: a claim moving the row to InProgress right now is waited for, so a task that has
            // started is never cancelled here as if it were queued.
            func select() async throws -> PostgresRandomAccessRow? {
                let rows = try await connection.query(
                    """
                    SELECT * FROM tasks WHERE id = \(id) AND owner_key_hash = \(ownerKeyHash) AND webhook_url IS NOT NULL
                    FOR UPDATE
                    """,
                    logger: logger
                )
                var found: PostgresRandomAccessRow?
                for try await row in rows { found = row.makeRandomAccess() }
                return found
            }
            guard var row = try await select() else { return .nothing }
            var cancelled = false
            if try row["status"].decode(String.self) == TaskStatus.inQueue.rawValue {
                try await connection.query(
                    """
                    UPDATE tasks SET status = 'Cancelled', reason = \(WebhookEventRules.deletedReason),
                        finished_at = \(now.timeIntervalSince1970), cancel_requested = TRUE
                    WHERE id = \(id)
                    """,
                    logger: logger
                )
                cancelled = true
                guard let updated = try await select() else { return .nothing }
                row = updated
            }
            let added = try await Self.recordWebhookEvents(connection, row: row, now: now, render: render, logger: logger)
            return cancelled || !added.isEmpty ? .recorded(cancelledQueued: cancelled) : .nothing
        }
    }

    private static func recordWebhookEvents(
        _ connection: PostgresConnection,
        row: PostgresRandomAccessRow,
        now: Date,
        render: (TaskRecord, WebhookEvent) throws -> String,
        logger: Logger
    ) async throws -> [WebhookMessage] {
        let task = try record(row)
        let plan = WebhookEventRules.plan(
            task,
            startedRecorded: try row["webhook_started_recorded"].decode(Bool.self),
            endRecorded: try row["webhook_end_recorded"].decode(Bool.self)
        )
        var added: [WebhookMessage] = []
        if let url = task.webhook?.url {
            for event in plan.events {
                let body = try render(task, event)
                let at = now.timeIntervalSince1970
                let inserted = try await connection.query(
                    """
                    INSERT INTO webhook_outbox (id, task_id, event, url, body, created_at, next_attempt_at)
                    VALUES (\(WebhookEventRules.newMessageID()), \(task.id), \(event.rawValue), \(url), \(body), \(at), \(at))
                    ON CONFLICT (task_id, event) DO NOTHING
                    RETURNING *
                    """,
                    logger: logger
                )
                for try await message in inserted { added.append(try webhookMessage(message.makeRandomAccess())) }
            }
        }
        if plan.markStarted || plan.markEnd {
            try await connection.query(
                """
                UPDATE tasks SET webhook_started_recorded = webhook_started_recorded OR \(plan.markStarted),
                    webhook_end_recorded = webhook_end_recorded OR \(plan.markEnd)
                WHERE id = \(task.id)
                """,
                logger: logger
            )
        }
        return added
    }

    /// SKIP LOCKED and the claim's time in `next_attempt_at`: several API nodes never send one message at
    /// once, and one that dies mid-delivery only delays it until its claim runs out.
    public func claimWebhookMessages(limit: Int, now: Date, claim: Duration) async throws -> [WebhookMessage] {
        guard limit > 0 else { return [] }
        let until = now.addingTimeInterval(claim.seconds).timeIntervalSince1970
        let due = now.timeIntervalSince1970
        return try await withDeadline {
            let rows = try await client.query(
                """
                UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = \(until)
                WHERE id IN (
                    SELECT id FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= \(due)
                    ORDER BY next_attempt_at LIMIT \(limit)
                    FOR UPDATE SKIP LOCKED
                )
                RETURNING *
                """,
                logger: logger
            )
            var messages: [WebhookMessage] = []
            for try await row in rows { messages.append(try Self.webhookMessage(row.makeRandomAccess())) }
            return messages.sorted { $0.createdAt < $1.createdAt }
        }
    }

    @discardableResult
    public func recordWebhookAttempt(id: String, attempt: Int, outcome: WebhookAttemptRecord, now: Date) async throws -> Bool {
        let finished = now.timeIntervalSince1970
        return try await withDeadline {
            let rows: PostgresRowSequence
            switch outcome {
            case .delivered(let status):
                rows = try await client.query(
                    """
                    UPDATE webhook_outbox SET state = 'delivered', finished_at = \(finished), last_status = \(status), last_error = NULL
                    WHERE id = \(id) AND attempts = \(attempt) AND state = 'pending'
                    RETURNING id
                    """,
                    logger: logger
                )
            case .retry(let at, let error, let status):
                rows = try await client.query(
                    """
                    UPDATE webhook_outbox SET next_attempt_at = \(at.timeIntervalSince1970), last_error = \(error), last_status = \(status)
                    WHERE id = \(id) AND attempts = \(attempt) AND state = 'pending'
                    RETURNING id
                    """,
                    logger: logger
                )
            case .gaveUp(let error, let status):
                rows = try await client.query(
                    """
                    UPDATE webhook_outbox SET state = 'gave_up', finished_at = \(finished), last_error = \(error), last_status = \(status)
                    WHERE id = \(id) AND attempts = \(attempt) AND state = 'pending'
                    RETURNING id
                    """,
                    logger: logger
                )
            }
            var changed = false
            for try await _ in rows.decode(String.self) { changed = true }
            return changed
        }
    }

    public func pendingWebhookMessageCount() async throws -> Int {
        try await withDeadline {
            var count = 0
            let rows = try await client.query("SELECT count(*) FROM webhook_outbox WHERE state = 'pending'", logger: logger)
            for try await value in rows.decode(Int.self) { count = value }
            return count
        }
    }

    public func pruneWebhookMessages(finishedBefore: Date) async throws -> Int {
        try await withDeadline {
            let rows = try await client.query(
                "DELETE FROM webhook_outbox WHERE state <> 'pending' AND finished_at < \(finishedBefore.timeIntervalSince1970) RETURNING id",
                logger: logger
            )
            var count = 0
            for try await _ in rows.decode(String.self) { count += 1 }
            return count
        }
    }

    public func webhookMessages(taskID: String) async throws -> [WebhookMessage] {
        try await withDeadline {
            let rows = try await client.query("SELECT * FROM webhook_outbox WHERE task_id = \(taskID) ORDER BY seq", logger: logger)
            var messages: [WebhookMessage] = []
            for try await row in rows { messages.append(try Self.webhookMessage(row.makeRandomAccess())) }
            return messages
        }
    }

    package static func webhookMessage(_ row: PostgresRandomAccessRow) throws -> WebhookMessage {
        WebhookMessage(
            id: try row["id"].decode(String.self),
            taskID: try row["task_id"].decode(String.self),
            event: WebhookEvent(rawValue: try row["event"].decode(String.self)) ?? .failed,
            url: try row["url"].decode(String.self),
            body: try row["body"].decode(String.self),
            state: WebhookMessage.State(rawValue: try row["state"].decode(String.self)) ?? .pending,
            attempts: try row["attempts"].decode(Int.self),
            createdAt: Date(timeIntervalSince1970: try row["created_at"].decode(Double.self)),
            nextAttemptAt: Date(timeIntervalSince1970: try row["next_attempt_at"].decode(Double.self)),
            lastError: try row["last_error"].decode(String?.self),
            lastStatus: try row["last_status"].decode(Int?.self),
            finishedAt: try row["finished_at"].decode(Double?.self).map(Date.init(timeIntervalSince1970:))
        )
    }
}
