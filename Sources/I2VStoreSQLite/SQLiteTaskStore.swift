import Foundation
import GRDB
import I2VCore

/// The default task store: one SQLite file in the data dir, WAL mode, versioned migrations.
public struct SQLiteTaskStore: TaskStore {
    package let database: DatabasePool

    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        self.database = try DatabasePool(path: path, configuration: configuration)
        do {
            try Self.migrator.migrate(database)
        } catch {
            // Another process opening the same file at the same moment can apply a migration between this
            // one's check and its apply (the migration then fails: its table or column is already changed).
            // Each migration commits with its bookkeeping, so a second look finds it applied.
            try Self.migrator.migrate(database)
        }
    }

    package static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: tasks") { db in
            try db.execute(
                sql: """
                    CREATE TABLE tasks (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        id TEXT NOT NULL UNIQUE,
                        owner_key_hash TEXT NOT NULL,
                        status TEXT NOT NULL,
                        model TEXT NOT NULL,
                        prompt TEXT NOT NULL,
                        negative_prompt TEXT NOT NULL,
                        width INTEGER NOT NULL,
                        height INTEGER NOT NULL,
                        num_frames INTEGER NOT NULL,
                        guidance_scale REAL NOT NULL,
                        infer_steps INTEGER NOT NULL,
                        seed INTEGER NOT NULL,
                        input_path TEXT NOT NULL,
                        fetch_seconds REAL NOT NULL DEFAULT 0,
                        decode_seconds REAL NOT NULL DEFAULT 0,
                        png_seconds REAL NOT NULL DEFAULT 0,
                        reason TEXT,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        cancel_requested INTEGER NOT NULL DEFAULT 0,
                        progress_step INTEGER,
                        progress_total INTEGER,
                        video_name TEXT,
                        result_width INTEGER,
                        result_height INTEGER,
                        result_frames INTEGER,
                        result_fps INTEGER,
                        inference_seconds REAL,
                        encode_seconds REAL,
                        video_expired INTEGER NOT NULL DEFAULT 0,
                        created_at REAL NOT NULL,
                        started_at REAL,
                        finished_at REAL
                    );
                    CREATE INDEX tasks_status_seq ON tasks(status, seq);
                    CREATE INDEX tasks_finished_at ON tasks(finished_at) WHERE finished_at IS NOT NULL;
                    """
            )
        }
        migrator.registerMigration("v2: leases, input keys, what the worker ran, listing by owner, submit buckets") { db in
            try db.execute(
                sql: """
                    ALTER TABLE tasks RENAME COLUMN input_path TO input_key;
                    ALTER TABLE tasks ADD COLUMN lease_node TEXT;
                    ALTER TABLE tasks ADD COLUMN lease_expires_at REAL;
                    ALTER TABLE tasks ADD COLUMN result_infer_steps INTEGER;
                    ALTER TABLE tasks ADD COLUMN result_guidance_scale REAL;
                    CREATE INDEX tasks_lease ON tasks(lease_expires_at) WHERE status = 'InProgress';
                    CREATE INDEX tasks_owner_seq ON tasks(owner_key_hash, seq);
                    CREATE TABLE submit_buckets (
                        owner_key_hash TEXT PRIMARY KEY, tokens REAL NOT NULL, updated_at REAL NOT NULL
                    );
                    """
            )
            // Inputs used to be recorded by absolute path; the file name is the key.
            for row in try Row.fetchAll(db, sql: "SELECT id, input_key FROM tasks WHERE instr(input_key, '/') > 0") {
                let path: String = row["input_key"]
                try db.execute(
                    sql: "UPDATE tasks SET input_key = ? WHERE id = ?",
                    arguments: [(path as NSString).lastPathComponent, row["id"] as String]
                )
            }
        }
        migrator.registerMigration("v3: worker node registry, idempotency keys") { db in
            try db.execute(
                sql: """
                    CREATE TABLE nodes (
                        id TEXT PRIMARY KEY,
                        models TEXT NOT NULL,
                        slots INTEGER NOT NULL,
                        running INTEGER NOT NULL,
                        free_memory_bytes INTEGER,
                        bytes_per_token INTEGER,
                        started_at REAL NOT NULL,
                        heartbeat_at REAL NOT NULL
                    );
                    CREATE TABLE idempotency_keys (
                        owner_key_hash TEXT NOT NULL,
                        key TEXT NOT NULL,
                        request_hash TEXT NOT NULL,
                        task_id TEXT NOT NULL,
                        state TEXT NOT NULL DEFAULT 'pending',
                        created_at REAL NOT NULL,
                        PRIMARY KEY (owner_key_hash, key)
                    );
                    CREATE INDEX idempotency_keys_created_at ON idempotency_keys(created_at);
                    """
            )
        }
        migrator.registerMigration("v4: webhook subscriptions, webhook outbox") { db in
            try db.execute(sql: SQLiteTaskStore.webhookMigration)
        }
        migrator.registerMigration("v5: last frames") { db in
            try db.execute(sql: "ALTER TABLE tasks ADD COLUMN last_input_key TEXT")
        }
        migrator.registerMigration("v6: LoRAs") { db in
            try db.execute(sql: "ALTER TABLE tasks ADD COLUMN loras TEXT")
            // The set's key, so that a claim for one set finds its oldest task by index.
            try db.execute(sql: "ALTER TABLE tasks ADD COLUMN lora_set TEXT NOT NULL DEFAULT ''")
            try db.execute(sql: "CREATE INDEX tasks_queued_lora_set ON tasks(lora_set, seq) WHERE status = 'InQueue'")
            try db.execute(sql: "ALTER TABLE tasks ADD COLUMN guidance_scale_2 REAL")
            try db.execute(sql: "ALTER TABLE nodes ADD COLUMN devices TEXT")
        }
        return migrator
    }

    public func enqueue(_ task: TaskRecord, maxQueued: Int) async throws {
        try await database.write { db in
            let queued = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM tasks WHERE status = 'InQueue'") ?? 0
            guard queued < maxQueued else { throw QueueFullError(queued: queued) }
            let p = task.parameters
            try db.execute(
                sql: """
                    INSERT INTO tasks (id, owner_key_hash, status, model, prompt, negative_prompt, width, height,
                        num_frames, guidance_scale, infer_steps, seed, input_key, fetch_seconds, decode_seconds,
                        png_seconds, created_at, webhook_url, webhook_events, webhook_started_recorded,
                        webhook_end_recorded, last_input_key, loras, lora_set, guidance_scale_2)
                    VALUES (?, ?, 'InQueue', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    task.id, task.ownerKeyHash, p.model, p.prompt, p.negativePrompt, p.width, p.height,
                    p.numFrames, p.guidanceScale, p.inferSteps, p.seed, task.inputKey, task.intake.fetch,
                    task.intake.decode, task.intake.encode, task.createdAt.timeIntervalSince1970,
                    task.webhook?.url, task.webhook?.storedEvents, !task.webhookWantsStarted, !task.webhookWantsEnding,
                    task.lastInputKey, TaskLoRA.stored(task.loras), TaskLoRA.setKey(task.loras), p.guidanceScale2,
                ]
            )
        }
    }

    public func takeSubmitToken(owner: String, perMinute: Int, now: Date) async throws -> Int? {
        guard perMinute > 0 else { return nil }
        return try await database.write { db in
            let row = try Row.fetchOne(
                db,
                sql: "SELECT tokens, updated_at FROM submit_buckets WHERE owner_key_hash = ?",
                arguments: [owner]
            )
            let (bucket, retryAfter) = SubmitBucket.take(
                row.map { SubmitBucket(tokens: $0["tokens"], updatedAt: $0["updated_at"]) },
                perMinute: perMinute,
                now: now.timeIntervalSince1970
            )
            try db.execute(
                sql: """
                    INSERT INTO submit_buckets (owner_key_hash, tokens, updated_at) VALUES (?, ?, ?)
                    ON CONFLICT (owner_key_hash) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at
                    """,
                arguments: [owner, bucket.tokens, bucket.updatedAt]
            )
            return retryAfter
        }
    }

    public func task(id: String) async throws -> TaskRecord? {
        try await database.read { db in
            try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM tasks WHERE id = ?"), arguments: [id]).map(Self.record)
        }
    }

    public func queuePosition(id: String) async throws -> Int? {
        try await database.read { db in
            try Int.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT (SELECT COUNT(*) FROM tasks AS ahead
                                WHERE ahead.status = 'InQueue' AND ahead.seq <= t.seq AND lower(ahead.model) = lower(t.model))
                        FROM tasks AS t WHERE t.id = ? AND t.status = 'InQueue'
                        """
                ),
                arguments: [id]
            )
        }
    }

    public func counts() async throws -> QueueCounts {
        try await database.read { db in
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT COALESCE(SUM(status = 'InQueue'), 0) AS queued,
                           COALESCE(SUM(status = 'InProgress'), 0) AS running
                    FROM tasks WHERE status IN ('InQueue', 'InProgress')
                    """
            )
            return QueueCounts(queued: row?["queued"] ?? 0, running: row?["running"] ?? 0)
        }
    }

    public func claimNext(node: String, lease: Duration, models: [String]?, loraSet: String?) async throws -> TaskRecord? {
        try await database.write { db in
            let filter = (models.map { "AND lower(model) IN (\(databaseQuestionMarks(count: $0.count)))" } ?? "") + (loraSet == nil ? "" : " AND lora_set = ?")
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: "SELECT id, infer_steps, \(Self.stateColumns) FROM tasks WHERE status = 'InQueue' \(filter) ORDER BY seq LIMIT 1",
                    arguments: StatementArguments((models ?? []).map { $0.lowercased() }) + StatementArguments(loraSet.map { [$0] } ?? [])
                )
            else { return nil }
            let id: String = row["id"]
            let now = Date()
            let plan = TaskStateMachine.claim(
                Self.state(row), node: node, leaseUntil: now.addingTimeInterval(lease.seconds), totalSteps: row["infer_steps"], now: now
            )
            guard try Self.apply(plan, id: id, db) else { return nil }
            return try Row.fetchOne(db, sql: "SELECT * FROM tasks WHERE id = ?", arguments: [id]).map(Self.record)
        }
    }

    public func renewLeases(node: String, ids: [String], lease: Duration) async throws -> Set<String> {
        guard !ids.isEmpty else { return [] }
        return try await database.write { db in
            let now = Date()
            var held = Set<String>()
            for (id, state) in try Self.states(
                db, where: "lease_node = ? AND id IN (\(databaseQuestionMarks(count: ids.count)))", StatementArguments([node]) + StatementArguments(ids))
            {
                let plan = TaskStateMachine.renew(state, node: node, leaseUntil: now.addingTimeInterval(lease.seconds), now: now)
                if try Self.apply(plan, id: id, db) { held.insert(id) }
            }
            return held
        }
    }

    public func recordProgress(id: String, node: String, step: Int, total: Int) async throws {
        _ = try await transition(id: id) { state in state.map { TaskStateMachine.progress($0, node: node, step: step, total: total) } ?? TaskPlan(false) }
    }

    @discardableResult
    public func finish(id: String, node: String, outcome: TaskOutcome) async throws -> FinishOutcome {
        try await transition(id: id) { state in
            state.map { TaskStateMachine.finish($0, node: node, outcome: outcome, now: Date()) } ?? TaskPlan(.notRunning)
        }
    }

    public func cancel(id: String, ownerKeyHash: String) async throws -> CancelOutcome {
        try await database.write { db in
            try Self.apply(TaskStateMachine.cancel(try Self.state(db, id: id), owner: ownerKeyHash, now: Date()), id: id, db)
        }
    }

    public func cancelRequested(among ids: [String]) async throws -> Set<String> {
        guard !ids.isEmpty else { return [] }
        return try await database.read { db in
            let marks = databaseQuestionMarks(count: ids.count)
            return Set(
                try String.fetchAll(
                    db,
                    sql: "SELECT id FROM tasks WHERE cancel_requested = 1 AND status = 'InProgress' AND id IN (\(marks))",
                    arguments: StatementArguments(ids)
                )
            )
        }
    }

    public func requeue(
        id: String, node: String, maxAttempts: Int, reason: String, countAttempt: Bool
    ) async throws
        -> RequeueOutcome
    {
        try await transition(id: id) { state in
            state.map {
                TaskStateMachine.requeue($0, node: node, maxAttempts: maxAttempts, reason: reason, countAttempt: countAttempt, now: Date())
            } ?? TaskPlan(.notRunning)
        }
    }

    public func recoverInterrupted(node: String, maxAttempts: Int) async throws -> [String: RequeueOutcome] {
        try await database.write { db in
            var outcomes: [String: RequeueOutcome] = [:]
            for (id, state) in try Self.states(db, where: "status = 'InProgress' AND lease_node = ?", [node]) {
                outcomes[id] = try Self.apply(TaskStateMachine.recoverInterrupted(state, node: node, maxAttempts: maxAttempts, now: Date()), id: id, db)
            }
            return outcomes
        }
    }

    public func requeueExpiredLeases(maxAttempts: Int, now: Date) async throws -> [String: RequeueOutcome] {
        try await database.write { db in
            let rows = try Self.states(
                db, where: "status = 'InProgress' AND (lease_expires_at IS NULL OR lease_expires_at < ?)", [now.timeIntervalSince1970]
            )
            var outcomes: [String: RequeueOutcome] = [:]
            for (id, state) in rows {
                outcomes[id] = try Self.apply(TaskStateMachine.expireLease(state, maxAttempts: maxAttempts, now: now), id: id, db)
            }
            return outcomes
        }
    }

    // MARK: The state machine's plans

    /// The lifecycle columns `TaskState` is read from and written to.
    package static let stateColumns = """
        status, owner_key_hash, attempts, cancel_requested, lease_node, lease_expires_at, started_at, finished_at, reason,
        progress_step, progress_total, video_expired
        """

    package static func state(_ row: Row) -> TaskState {
        TaskState(
            status: TaskStatus(rawValue: row["status"]) ?? .failed,
            owner: row["owner_key_hash"],
            attempts: row["attempts"],
            cancelRequested: row["cancel_requested"],
            holder: row["lease_node"],
            leaseExpiresAt: (row["lease_expires_at"] as Double?).map(Date.init(timeIntervalSince1970:)),
            startedAt: (row["started_at"] as Double?).map(Date.init(timeIntervalSince1970:)),
            finishedAt: (row["finished_at"] as Double?).map(Date.init(timeIntervalSince1970:)),
            reason: row["reason"],
            progressStep: row["progress_step"],
            progressTotal: row["progress_total"],
            videoExpired: row["video_expired"]
        )
    }

    package static func state(_ db: Database, id: String) throws -> TaskState? {
        try Row.fetchOne(db, sql: "SELECT \(stateColumns) FROM tasks WHERE id = ?", arguments: [id]).map(state)
    }

    package static func states(_ db: Database, where condition: String, _ arguments: StatementArguments) throws -> [(id: String, state: TaskState)] {
        try Row.fetchAll(db, sql: "SELECT id, \(stateColumns) FROM tasks WHERE \(condition) ORDER BY seq", arguments: arguments)
            .map { ($0["id"], state($0)) }
    }

    /// One transition on one row, in one transaction (`state` is nil when there is no such task).
    package func transition<Outcome: Sendable & Equatable>(
        id: String, _ decide: @escaping @Sendable (_ state: TaskState?) -> TaskPlan<Outcome>
    ) async throws -> Outcome {
        try await database.write { db in try Self.apply(decide(try Self.state(db, id: id)), id: id, db) }
    }

    /// Writes a plan's change. Its effects need no telling here: one node uses this store, and its use
    /// cases and dispatcher share one in-process signal.
    package static func apply<Outcome>(_ plan: TaskPlan<Outcome>, id: String, _ db: Database) throws -> Outcome {
        switch plan.change {
        case .none:
            break
        case .delete:
            try db.execute(sql: "DELETE FROM tasks WHERE id = ?", arguments: [id])
        case .update(let state, let result):
            try db.execute(
                sql: """
                    UPDATE tasks SET status = ?, owner_key_hash = ?, attempts = ?, cancel_requested = ?, lease_node = ?,
                        lease_expires_at = ?, started_at = ?, finished_at = ?, reason = ?, progress_step = ?,
                        progress_total = ?, video_expired = ?
                    WHERE id = ?
                    """,
                arguments: [
                    state.status.rawValue, state.owner, state.attempts, state.cancelRequested, state.holder,
                    state.leaseExpiresAt?.timeIntervalSince1970, state.startedAt?.timeIntervalSince1970,
                    state.finishedAt?.timeIntervalSince1970, state.reason, state.progressStep, state.progressTotal,
                    state.videoExpired, id,
                ]
            )
            if let result {
                try db.execute(
                    sql: """
                        UPDATE tasks SET video_name = ?, result_width = ?, result_height = ?, result_frames = ?,
                            result_fps = ?, inference_seconds = ?, encode_seconds = ?, result_infer_steps = ?,
                            result_guidance_scale = ?
                        WHERE id = ?
                        """,
                    arguments: [
                        result.videoName, result.width, result.height, result.numFrames, result.fps,
                        result.inferenceSeconds, result.encodeSeconds, result.inferSteps, result.guidanceScale, id,
                    ]
                )
            }
        }
        return plan.outcome
    }

    public func tasksWithVideosFinished(before: Date) async throws -> [TaskRecord] {
        try await database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM tasks WHERE status = 'Succeed' AND video_expired = 0 AND finished_at < ?
                    ORDER BY finished_at
                    """,
                arguments: [before.timeIntervalSince1970]
            ).map(Self.record)
        }
    }

    @discardableResult
    public func markVideoExpired(id: String) async throws -> Bool {
        try await transition(id: id) { state in state.map(TaskStateMachine.expireVideo) ?? TaskPlan(false) }
    }

    public func deleteTasks(finishedBefore: Date) async throws -> [TaskRecord] {
        try await database.write { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM tasks WHERE status IN ('Succeed', 'Failed', 'Cancelled') AND finished_at < ?
                    """,
                arguments: [finishedBefore.timeIntervalSince1970]
            ).map(Self.record)
            try db.execute(
                sql: """
                    DELETE FROM tasks WHERE status IN ('Succeed', 'Failed', 'Cancelled') AND finished_at < ?
                    """,
                arguments: [finishedBefore.timeIntervalSince1970]
            )
            return rows
        }
    }

    public func referencedFileNames() async throws -> Set<String> {
        try await database.read { db in
            var names = Set<String>()
            for row in try Row.fetchAll(db, sql: "SELECT input_key, video_name FROM tasks") {
                names.insert(row["input_key"])
                if let video: String = row["video_name"] { names.insert("\(video).mp4") }
            }
            return names
        }
    }

    public func ping() async throws {
        _ = try await database.read { db in try Int.fetchOne(db, sql: "SELECT 1") }
    }

    package static func record(_ row: Row) -> TaskRecord {
        let parameters = TaskParameters(
            model: row["model"],
            prompt: row["prompt"],
            negativePrompt: row["negative_prompt"],
            width: row["width"],
            height: row["height"],
            numFrames: row["num_frames"],
            guidanceScale: row["guidance_scale"],
            inferSteps: row["infer_steps"],
            seed: row["seed"],
            guidanceScale2: row["guidance_scale_2"]
        )
        var record = TaskRecord(
            id: row["id"],
            ownerKeyHash: row["owner_key_hash"],
            parameters: parameters,
            inputKey: row["input_key"],
            intake: IntakeTimings(fetch: row["fetch_seconds"], decode: row["decode_seconds"], encode: row["png_seconds"]),
            createdAt: Date(timeIntervalSince1970: row["created_at"])
        )
        record.status = TaskStatus(rawValue: row["status"]) ?? .failed
        record.reason = row["reason"]
        record.attempts = row["attempts"]
        record.cancelRequested = row["cancel_requested"]
        record.progressStep = row["progress_step"]
        record.progressTotal = row["progress_total"]
        if record.status == .inProgress, let node: String = row["lease_node"], let expires: Double = row["lease_expires_at"] {
            record.lease = Lease(node: node, expiresAt: Date(timeIntervalSince1970: expires))
        }
        record.videoExpired = row["video_expired"]
        record.startedAt = (row["started_at"] as Double?).map(Date.init(timeIntervalSince1970:))
        record.finishedAt = (row["finished_at"] as Double?).map(Date.init(timeIntervalSince1970:))
        record.lastInputKey = row["last_input_key"]
        record.loras = TaskLoRA.fromStored(row["loras"])
        record.webhook = WebhookSubscription(url: row["webhook_url"], storedEvents: row["webhook_events"])
        if let videoName: String = row["video_name"] {
            record.result = TaskResult(
                videoName: videoName,
                width: row["result_width"],
                height: row["result_height"],
                numFrames: row["result_frames"],
                fps: row["result_fps"],
                inferenceSeconds: row["inference_seconds"],
                encodeSeconds: row["encode_seconds"] ?? 0,
                inferSteps: row["result_infer_steps"],
                guidanceScale: row["result_guidance_scale"]
            )
        }
        return record
    }
}
