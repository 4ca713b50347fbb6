import Foundation
import GRDB
import I2VCore

extension SQLiteTaskStore: WebhookOutbox {
    /// Migration v4. `webhook_started_recorded` and `webhook_end_recorded` say the task's start and end are
    /// in the outbox (or need not be: not subscribed); the partial index holds only the tasks with a webhook
    /// that have left the queue and still have something to record, so collecting stays cheap however many
    /// tasks wait in the queue.
    package static let webhookMigration = """
        ALTER TABLE tasks ADD COLUMN webhook_url TEXT;
        ALTER TABLE tasks ADD COLUMN webhook_events TEXT;
        ALTER TABLE tasks ADD COLUMN webhook_started_recorded INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN webhook_end_recorded INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX tasks_webhook_due ON tasks(seq)
            WHERE webhook_url IS NOT NULL AND status <> 'InQueue' AND (webhook_started_recorded = 0 OR webhook_end_recorded = 0);
        CREATE TABLE webhook_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            task_id TEXT NOT NULL,
            event TEXT NOT NULL,
            url TEXT NOT NULL,
            body TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            last_error TEXT,
            last_status INTEGER,
            finished_at REAL,
            UNIQUE (task_id, event)
        );
        CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt_at) WHERE state = 'pending';
        CREATE INDEX webhook_outbox_finished ON webhook_outbox(finished_at) WHERE state <> 'pending';
        """

    /// The partial index's own terms, word for word (SQLite uses a partial index only for a query that
    /// repeats them), narrowed to rows with something to do: a running task whose start is recorded waits
    /// for its end.
    package static let webhookDueSQL = """
        SELECT * FROM tasks
        WHERE webhook_url IS NOT NULL AND status <> 'InQueue' AND (webhook_started_recorded = 0 OR webhook_end_recorded = 0)
            AND (status <> 'InProgress' OR webhook_started_recorded = 0)
        ORDER BY seq LIMIT ?
        """

    public func collectWebhookEvents(
        limit: Int,
        now: Date,
        render: @escaping @Sendable (TaskRecord, WebhookEvent) throws -> String
    ) async throws -> [WebhookMessage] {
        try await database.write { db in
            var added: [WebhookMessage] = []
            for row in try Row.fetchAll(db, sql: Self.webhookDueSQL, arguments: [limit]) {
                added += try Self.recordWebhookEvents(db, row: row, now: now, render: render)
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
        try await database.write { db in
            let select = "SELECT * FROM tasks WHERE id = ? AND owner_key_hash = ? AND webhook_url IS NOT NULL"
            guard var row = try Row.fetchOne(db, sql: select, arguments: [id, ownerKeyHash]) else { return .nothing }
            var cancelled = false
            if (row["status"] as String) == TaskStatus.inQueue.rawValue {
                try db.execute(
                    sql: """
                        UPDATE tasks SET status = 'Cancelled', reason = ?, finished_at = ?, cancel_requested = 1
                        WHERE id = ?
                        """,
                    arguments: [WebhookEventRules.deletedReason, now.timeIntervalSince1970, id]
                )
                cancelled = true
                guard let updated = try Row.fetchOne(db, sql: select, arguments: [id, ownerKeyHash]) else { return .nothing }
                row = updated
            }
            let added = try Self.recordWebhookEvents(db, row: row, now: now, render: render)
            return cancelled || !added.isEmpty ? .recorded(cancelledQueued: cancelled) : .nothing
        }
    }

    /// Adds the messages `WebhookEventRules.plan` asks for and sets the marks, in the caller's transaction.
    private static func recordWebhookEvents(
        _ db: Database,
        row: Row,
        now: Date,
        render: (TaskRecord, WebhookEvent) throws -> String
    ) throws -> [WebhookMessage] {
        let task = record(row)
        let plan = WebhookEventRules.plan(task, startedRecorded: row["webhook_started_recorded"], endRecorded: row["webhook_end_recorded"])
        var added: [WebhookMessage] = []
        if let url = task.webhook?.url {
            for event in plan.events {
                // UNIQUE (task_id, event): an event is in the outbox once, whatever happens around it.
                let inserted = try Row.fetchOne(
                    db,
                    sql: """
                        INSERT INTO webhook_outbox (id, task_id, event, url, body, created_at, next_attempt_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                        ON CONFLICT (task_id, event) DO NOTHING
                        RETURNING *
                        """,
                    arguments: [
                        WebhookEventRules.newMessageID(), task.id, event.rawValue, url, try render(task, event),
                        now.timeIntervalSince1970, now.timeIntervalSince1970,
                    ]
                )
                if let inserted { added.append(webhookMessage(inserted)) }
            }
        }
        if plan.markStarted || plan.markEnd {
            try db.execute(
                sql: """
                    UPDATE tasks SET webhook_started_recorded = webhook_started_recorded OR ?,
                        webhook_end_recorded = webhook_end_recorded OR ?
                    WHERE id = ?
                    """,
                arguments: [plan.markStarted, plan.markEnd, task.id]
            )
        }
        return added
    }

    public func claimWebhookMessages(limit: Int, now: Date, claim: Duration) async throws -> [WebhookMessage] {
        guard limit > 0 else { return [] }
        return try await database.write { db in
            try Row.fetchAll(
                db,
                sql: """
                    UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?
                    WHERE id IN (
                        SELECT id FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= ?
                        ORDER BY next_attempt_at LIMIT ?
                    )
                    RETURNING *
                    """,
                arguments: [now.addingTimeInterval(claim.seconds).timeIntervalSince1970, now.timeIntervalSince1970, limit]
            ).map(Self.webhookMessage).sorted { $0.createdAt < $1.createdAt }
        }
    }

    @discardableResult
    public func recordWebhookAttempt(id: String, attempt: Int, outcome: WebhookAttemptRecord, now: Date) async throws -> Bool {
        try await database.write { db in
            switch outcome {
            case .delivered(let status):
                try db.execute(
                    sql: """
                        UPDATE webhook_outbox SET state = 'delivered', finished_at = ?, last_status = ?, last_error = NULL
                        WHERE id = ? AND attempts = ? AND state = 'pending'
                        """,
                    arguments: [now.timeIntervalSince1970, status, id, attempt]
                )
            case .retry(let at, let error, let status):
                try db.execute(
                    sql: """
                        UPDATE webhook_outbox SET next_attempt_at = ?, last_error = ?, last_status = ?
                        WHERE id = ? AND attempts = ? AND state = 'pending'
                        """,
                    arguments: [at.timeIntervalSince1970, error, status, id, attempt]
                )
            case .gaveUp(let error, let status):
                try db.execute(
                    sql: """
                        UPDATE webhook_outbox SET state = 'gave_up', finished_at = ?, last_error = ?, last_status = ?
                        WHERE id = ? AND attempts = ? AND state = 'pending'
                        """,
                    arguments: [now.timeIntervalSince1970, error, status, id, attempt]
                )
            }
            return db.changesCount > 0
        }
    }

    public func pendingWebhookMessageCount() async throws -> Int {
        try await database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending'") ?? 0
        }
    }

    public func pruneWebhookMessages(finishedBefore: Date) async throws -> Int {
        try await database.write { db in
            try db.execute(
                sql: "DELETE FROM webhook_outbox WHERE state <> 'pending' AND finished_at < ?",
                arguments: [finishedBefore.timeIntervalSince1970]
            )
            return db.changesCount
        }
    }

    public func webhookMessages(taskID: String) async throws -> [WebhookMessage] {
        try await database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM webhook_outbox WHERE task_id = ? ORDER BY seq", arguments: [taskID])
                .map(Self.webhookMessage)
        }
    }

    package static func webhookMessage(_ row: Row) -> WebhookMessage {
        WebhookMessage(
            id: row["id"],
            taskID: row["task_id"],
            event: WebhookEvent(rawValue: row["event"]) ?? .failed,
            url: row["url"],
            body: row["body"],
            state: WebhookMessage.State(rawValue: row["state"]) ?? .pending,
            attempts: row["attempts"],
            createdAt: Date(timeIntervalSince1970: row["created_at"]),
            nextAttemptAt: Date(timeIntervalSince1970: row["next_attempt_at"]),
            lastError: row["last_error"],
            lastStatus: row["last_status"],
            finishedAt: (row["finished_at"] as Double?).map(Date.init(timeIntervalSince1970:))
        )
    }
}
