import Foundation
import I2VCore
import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The shared task store for several nodes: one PostgreSQL database, the same semantics as the SQLite store.
///
/// Queries go through `client`, a connection pool that only works while its `run()` is running: the
/// application runs it as a service, shut down last so the dispatcher can still record how its jobs ended.
/// Times are DOUBLE PRECISION epoch seconds, like SQLite's REAL: TIMESTAMPTZ keeps microseconds only, so a
/// `Date` would not come back exactly as it went in.
public struct PostgresTaskStore: TaskStore {
    public let client: PostgresClient
    public let endpoint: PostgresEndpoint
    /// How long one call may wait for the database before it fails with `StoreUnavailable`.
    public let timeout: Duration
    package let logger: Logger

    /// The pool, to be run for as long as the store is used.
    public var service: any Service { client }

    /// Checks the database can be reached, applies the migrations, and returns a store whose `service`
    /// must then be run. A database that cannot be reached or migrated throws `PostgresStoreUnavailable`.
    public init(endpoint: PostgresEndpoint, maximumConnections: Int = 20, timeout: Duration = .seconds(10), logger: Logger) async throws {
        do {
            try await Self.migrate(endpoint: endpoint, logger: logger)
            var configuration = endpoint.clientConfiguration()
            configuration.options.maximumConnections = maximumConnections
            self.client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        } catch {
            throw PostgresStoreUnavailable(endpoint: endpoint, reason: Self.describe(error))
        }
        self.endpoint = endpoint
        self.timeout = timeout
        self.logger = logger
    }

    // MARK: Migrations

    /// Append only: a version, once released, never changes, because other nodes may already have applied it.
    package static let migrations: [(version: Int, name: String, statements: [String])] = [
        (
            1, "tasks",
            [
                """
                CREATE TABLE tasks (
                    seq BIGSERIAL PRIMARY KEY,
                    id TEXT NOT NULL UNIQUE,
                    owner_key_hash TEXT NOT NULL,
                    status TEXT NOT NULL,
                    model TEXT NOT NULL,
                    prompt TEXT NOT NULL,
                    negative_prompt TEXT NOT NULL,
                    width BIGINT NOT NULL,
                    height BIGINT NOT NULL,
                    num_frames BIGINT NOT NULL,
                    guidance_scale DOUBLE PRECISION NOT NULL,
                    infer_steps BIGINT NOT NULL,
                    seed BIGINT NOT NULL,
                    input_path TEXT NOT NULL,
                    fetch_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
                    decode_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
                    png_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
                    reason TEXT,
                    attempts BIGINT NOT NULL DEFAULT 0,
                    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
                    progress_step BIGINT,
                    progress_total BIGINT,
                    video_name TEXT,
                    result_width BIGINT,
                    result_height BIGINT,
                    result_frames BIGINT,
                    result_fps BIGINT,
                    inference_seconds DOUBLE PRECISION,
                    encode_seconds DOUBLE PRECISION,
                    video_expired BOOLEAN NOT NULL DEFAULT FALSE,
                    created_at DOUBLE PRECISION NOT NULL,
                    started_at DOUBLE PRECISION,
                    finished_at DOUBLE PRECISION
                )
                """,
                "CREATE INDEX tasks_status_seq ON tasks (status, seq)",
                "CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL",
            ]
        ),
        (
            2, "leases, input keys, what the worker ran, listing by owner, submit buckets",
            [
                "ALTER TABLE tasks RENAME COLUMN input_path TO input_key",
                // Inputs used to be recorded by absolute path; the file name is the key.
                "UPDATE tasks SET input_key = regexp_replace(input_key, '^.*/', '') WHERE input_key LIKE '%/%'",
                "ALTER TABLE tasks ADD COLUMN lease_node TEXT",
                "ALTER TABLE tasks ADD COLUMN lease_expires_at DOUBLE PRECISION",
                "ALTER TABLE tasks ADD COLUMN result_infer_steps BIGINT",
                "ALTER TABLE tasks ADD COLUMN result_guidance_scale DOUBLE PRECISION",
                "CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'InProgress'",
                // Listing a key's tasks, newest or oldest first.
                "CREATE INDEX tasks_owner_seq ON tasks (owner_key_hash, seq)",
                """
                CREATE TABLE submit_buckets (
                    owner_key_hash TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL
                )
                """,
            ]
        ),
        (
            3, "worker node registry, idempotency keys",
            [
                """
                CREATE TABLE nodes (
                    id TEXT PRIMARY KEY,
                    models TEXT NOT NULL,
                    slots BIGINT NOT NULL,
                    running BIGINT NOT NULL,
                    free_memory_bytes BIGINT,
                    bytes_per_token BIGINT,
                    started_at DOUBLE PRECISION NOT NULL,
                    heartbeat_at DOUBLE PRECISION NOT NULL
                )
                """,
                """
                CREATE TABLE idempotency_keys (
                    owner_key_hash TEXT NOT NULL,
                    key TEXT NOT NULL,
                    request_hash TEXT NOT NULL,
                    task_id TEXT NOT NULL,
                    state TEXT NOT NULL DEFAULT 'pending',
                    created_at DOUBLE PRECISION NOT NULL,
                    PRIMARY KEY (owner_key_hash, key)
                )
                """,
                "CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at)",
            ]
        ),
        (4, "webhook subscriptions, webhook outbox", webhookMigration),
        (5, "last frames", ["ALTER TABLE tasks ADD COLUMN last_input_key TEXT"]),
        (
            6, "LoRAs",
            [
                "ALTER TABLE tasks ADD COLUMN loras TEXT",
                // The set's key, so that a claim for one set finds its oldest task by index.
                "ALTER TABLE tasks ADD COLUMN lora_set TEXT NOT NULL DEFAULT ''",
                "CREATE INDEX tasks_queued_lora_set ON tasks (lora_set, seq) WHERE status = 'InQueue'",
                "ALTER TABLE tasks ADD COLUMN guidance_scale_2 DOUBLE PRECISION",
                "ALTER TABLE nodes ADD COLUMN devices TEXT",
            ]
        ),
    ]

    /// The channel every enqueue, requeue and cancel notifies, so idle nodes claim at once and a cancel
    /// reaches the node running the task without waiting for its next poll.
    package static let notificationChannel = "i2v_tasks"

    /// Advisory lock keys; advisory locks are per database, so these only have to be unique within ours.
    package static let migrationLockKey = 0x6932_765F_6D69_6772  // "i2v_migr"
    package static let enqueueLockKey = 0x6932_765F_656E_7175  // "i2v_enqu"

    /// Applies the missing migrations on a connection of its own, before the pool exists. Every node runs
    /// this at start, possibly at the same moment: the session advisory lock makes the others wait until
    /// the first has finished, and they then find nothing left to do. The lock also covers creating
    /// `schema_migrations`, which `IF NOT EXISTS` alone does not make safe against a concurrent create.
    package static func migrate(endpoint: PostgresEndpoint, logger: Logger) async throws {
        let connection = try await PostgresConnection.connect(
            configuration: try endpoint.connectionConfiguration(),
            id: 0,
            logger: logger
        )
        do {
            try await connection.query("SELECT pg_advisory_lock(\(migrationLockKey))", logger: logger)
            try await connection.query(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL
                )
                """,
                logger: logger
            )
            var applied = Set<Int>()
            for try await version in try await connection.query("SELECT version FROM schema_migrations", logger: logger)
                .decode(Int.self)
            {
                applied.insert(version)
            }
            for migration in migrations where !applied.contains(migration.version) {
                logger.info("applying PostgreSQL migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
                try await connection.withTransaction(logger: logger) { connection in
                    // Migrations are fixed text with nothing to bind.
                    for statement in migration.statements {
                        try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                    }
                    try await connection.query(
                        """
                        INSERT INTO schema_migrations (version, name, applied_at)
                        VALUES (\(migration.version), \(migration.name), \(Date().timeIntervalSince1970))
                        """,
                        logger: logger
                    )
                }
            }
            try await connection.query("SELECT pg_advisory_unlock(\(migrationLockKey))", logger: logger)
        } catch {
            // Closing the session releases the lock too.
            try? await connection.close()
            throw error
        }
        try await connection.close()
    }

    // MARK: TaskStore

    /// The cap is checked and the row inserted under a transaction-level advisory lock that only enqueues
    /// take, so two nodes cannot both see room for the last slot. Claims, cancels and reads never wait for
    /// it, and they can only shrink the queue. SERIALIZABLE would need a retry loop that a burst of submits
    /// keeps tripping; LOCK TABLE would stall the claims too.
    public func enqueue(_ task: TaskRecord, maxQueued: Int) async throws {
        try await transaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(Self.enqueueLockKey))", logger: logger)
            // Read committed: this statement's snapshot is taken after the lock, so it sees the rows of
            // every enqueue that held the lock before.
            let queued =
                try await Self.single(
                    Int.self,
                    connection.query("SELECT count(*) FROM tasks WHERE status = 'InQueue'", logger: logger)
                ) ?? 0
            guard queued < maxQueued else { throw QueueFullError(queued: queued) }
            let p = task.parameters
            try await connection.query(
                """
                INSERT INTO tasks (id, owner_key_hash, status, model, prompt, negative_prompt, width, height,
                    num_frames, guidance_scale, infer_steps, seed, input_key, fetch_seconds, decode_seconds,
                    png_seconds, created_at, webhook_url, webhook_events, webhook_started_recorded,
                    webhook_end_recorded, last_input_key, loras, lora_set, guidance_scale_2)
                VALUES (\(task.id), \(task.ownerKeyHash), 'InQueue', \(p.model), \(p.prompt), \(p.negativePrompt),
                    \(p.width), \(p.height), \(p.numFrames), \(p.guidanceScale), \(p.inferSteps), \(p.seed),
                    \(task.inputKey), \(task.intake.fetch), \(task.intake.decode), \(task.intake.encode),
                    \(task.createdAt.timeIntervalSince1970), \(task.webhook?.url), \(task.webhook?.storedEvents),
                    \(!task.webhookWantsStarted), \(!task.webhookWantsEnding), \(task.lastInputKey),
                    \(TaskLoRA.stored(task.loras)), \(TaskLoRA.setKey(task.loras)), \(p.guidanceScale2))
                """,
                logger: logger
            )
            try await Self.notify(connection, "queued", logger: logger)
        }
    }

    /// The row is created first so that `FOR UPDATE` has something to lock: two API nodes taking a key's
    /// token at once then queue on it instead of both reading the same count.
    public func takeSubmitToken(owner: String, perMinute: Int, now: Date) async throws -> Int? {
        guard perMinute > 0 else { return nil }
        let now = now.timeIntervalSince1970
        return try await transaction { connection in
            try await connection.query(
                """
                INSERT INTO submit_buckets (owner_key_hash, tokens, updated_at) VALUES (\(owner), \(Double(perMinute)), \(now))
                ON CONFLICT (owner_key_hash) DO NOTHING
                """,
                logger: logger
            )
            var current: SubmitBucket?
            let rows = try await connection.query(
                "SELECT tokens, updated_at FROM submit_buckets WHERE owner_key_hash = \(owner) FOR UPDATE",
                logger: logger
            )
            for try await (tokens, updatedAt) in rows.decode((Double, Double).self) {
                current = SubmitBucket(tokens: tokens, updatedAt: updatedAt)
            }
            let (bucket, retryAfter) = SubmitBucket.take(current, perMinute: perMinute, now: now)
            try await connection.query(
                """
                UPDATE submit_buckets SET tokens = \(bucket.tokens), updated_at = \(bucket.updatedAt)
                WHERE owner_key_hash = \(owner)
                """,
                logger: logger
            )
            return retryAfter
        }
    }

    public func task(id: String) async throws -> TaskRecord? {
        try await withDeadline {
            try await Self.records(client.query("SELECT * FROM tasks WHERE id = \(id)", logger: logger)).first
        }
    }

    public func queuePosition(id: String) async throws -> Int? {
        try await withDeadline {
            try await Self.single(
                Int.self,
                client.query(
                    """
                    SELECT (SELECT count(*) FROM tasks AS ahead
                            WHERE ahead.status = 'InQueue' AND ahead.seq <= t.seq AND lower(ahead.model) = lower(t.model))
                    FROM tasks AS t WHERE t.id = \(id) AND t.status = 'InQueue'
                    """,
                    logger: logger
                )
            )
        }
    }

    public func counts() async throws -> QueueCounts {
        try await withDeadline {
            let rows = try await client.query(
                """
                SELECT count(*) FILTER (WHERE status = 'InQueue'), count(*) FILTER (WHERE status = 'InProgress')
                FROM tasks WHERE status IN ('InQueue', 'InProgress')
                """,
                logger: logger
            )
            var counts = QueueCounts(queued: 0, running: 0)
            for try await (queued, running) in rows.decode((Int, Int).self) {
                counts = QueueCounts(queued: queued, running: running)
            }
            return counts
        }
    }

    /// One statement: the oldest queued row that no other claimer holds is locked and moved. A row another
    /// node is claiming at this moment is skipped rather than waited for, so two claims never get the same
    /// task and never queue behind each other.
    /// `TaskStateMachine.claim` as one statement: the claim is the queue's hot path, and a transaction that
    /// reads the row first would take three more round trips. The store contract suite checks that it
    /// leaves the row as the state machine's plan does.
    public func claimNext(node: String, lease: Duration, models: [String]?, loraSet: String?) async throws -> TaskRecord? {
        let now = Date()
        let anyModel = models == nil
        let wanted = (models ?? []).map { $0.lowercased() }
        let anySet = loraSet == nil
        let set = loraSet ?? ""
        return try await withDeadline {
            try await Self.records(
                client.query(
                    """
                    UPDATE tasks SET status = 'InProgress', attempts = attempts + 1,
                        started_at = \(now.timeIntervalSince1970), progress_step = 0, progress_total = infer_steps,
                        reason = NULL, lease_node = \(node),
                        lease_expires_at = \(now.addingTimeInterval(lease.seconds).timeIntervalSince1970)
                    WHERE status = 'InQueue' AND seq = (
                        SELECT seq FROM tasks WHERE status = 'InQueue' AND (\(anyModel) OR lower(model) = ANY(\(wanted)))
                            AND (\(anySet) OR lora_set = \(set))
                        ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED
                    )
                    RETURNING *
                    """,
                    logger: logger
                )
            ).first
        }
    }

    public func renewLeases(node: String, ids: [String], lease: Duration) async throws -> Set<String> {
        guard !ids.isEmpty else { return [] }
        return try await transaction { connection in
            let now = Date()
            var held = Set<String>()
            // Waits for rows another transaction holds (this node's own progress or finish, a cancel): a
            // skipped row would read as a lease lost, and stop a job that is still this node's.
            let rows = try await Self.states(connection, where: "lease_node = $1 AND id = ANY($2)", [node, ids], skipLocked: false, logger: self.logger)
            for (id, state) in rows {
                let plan = TaskStateMachine.renew(state, node: node, leaseUntil: now.addingTimeInterval(lease.seconds), now: now)
                if try await Self.apply(plan, id: id, connection, logger: self.logger) { held.insert(id) }
            }
            return held
        }
    }

    public func recordProgress(id: String, node: String, step: Int, total: Int) async throws {
        _ = try await transition(id: id) { state in state.map { TaskStateMachine.progress($0, node: node, step: step, total: total) } ?? TaskPlan(false) }
    }

    /// FOR UPDATE (in `transition`): a cancel arriving through another node waits until this ending is recorded.
    @discardableResult
    public func finish(id: String, node: String, outcome: TaskOutcome) async throws -> FinishOutcome {
        try await transition(id: id) { state in
            state.map { TaskStateMachine.finish($0, node: node, outcome: outcome, now: Date()) } ?? TaskPlan(.notRunning)
        }
    }

    public func cancel(id: String, ownerKeyHash: String) async throws -> CancelOutcome {
        try await transition(id: id) { state in TaskStateMachine.cancel(state, owner: ownerKeyHash, now: Date()) }
    }

    public func cancelRequested(among ids: [String]) async throws -> Set<String> {
        guard !ids.isEmpty else { return [] }
        return try await withDeadline {
            var requested = Set<String>()
            let rows = try await client.query(
                "SELECT id FROM tasks WHERE cancel_requested AND status = 'InProgress' AND id = ANY(\(ids))",
                logger: logger
            )
            for try await id in rows.decode(String.self) { requested.insert(id) }
            return requested
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
        try await transitionEach(where: "status = 'InProgress' AND lease_node = $1", [node]) { state in
            TaskStateMachine.recoverInterrupted(state, node: node, maxAttempts: maxAttempts, now: Date())
        }
    }

    /// SKIP LOCKED: when several nodes reap at once, each expired task is taken by one of them, and none
    /// waits on a row another is finishing.
    public func requeueExpiredLeases(maxAttempts: Int, now: Date) async throws -> [String: RequeueOutcome] {
        try await transitionEach(
            where: "status = 'InProgress' AND (lease_expires_at IS NULL OR lease_expires_at < $1)", [now.timeIntervalSince1970]
        ) { state in
            TaskStateMachine.expireLease(state, maxAttempts: maxAttempts, now: now)
        }
    }

    // MARK: The state machine's plans

    /// The lifecycle columns `TaskState` is read from and written to.
    package static let stateColumns = """
        status, owner_key_hash, attempts, cancel_requested, lease_node, lease_expires_at, started_at, finished_at, reason,
        progress_step, progress_total, video_expired
        """

    package static func state(_ row: PostgresRandomAccessRow) throws -> TaskState {
        TaskState(
            status: TaskStatus(rawValue: try row["status"].decode(String.self)) ?? .failed,
            owner: try row["owner_key_hash"].decode(String.self),
            attempts: try row["attempts"].decode(Int.self),
            cancelRequested: try row["cancel_requested"].decode(Bool.self),
            holder: try row["lease_node"].decode(String?.self),
            leaseExpiresAt: try row["lease_expires_at"].decode(Double?.self).map(Date.init(timeIntervalSince1970:)),
            startedAt: try row["started_at"].decode(Double?.self).map(Date.init(timeIntervalSince1970:)),
            finishedAt: try row["finished_at"].decode(Double?.self).map(Date.init(timeIntervalSince1970:)),
            reason: try row["reason"].decode(String?.self),
            progressStep: try row["progress_step"].decode(Int?.self),
            progressTotal: try row["progress_total"].decode(Int?.self),
            videoExpired: try row["video_expired"].decode(Bool.self)
        )
    }

    /// The rows that match, locked for this transaction; rows another transaction holds are skipped.
    package static func states(
        _ connection: PostgresConnection, where condition: String, _ bindings: [any PostgresEncodable & Sendable], skipLocked: Bool = true,
        logger: Logger
    ) async throws -> [(id: String, state: TaskState)] {
        let lock = skipLocked ? "FOR UPDATE SKIP LOCKED" : "FOR UPDATE"
        var query = PostgresQuery(unsafeSQL: "SELECT id, \(stateColumns) FROM tasks WHERE \(condition) ORDER BY seq \(lock)")
        for value in bindings { try query.binds.append(value) }
        var found: [(id: String, state: TaskState)] = []
        for try await row in try await connection.query(query, logger: logger) {
            let row = row.makeRandomAccess()
            found.append((try row["id"].decode(String.self), try state(row)))
        }
        return found
    }

    /// One transition on one row, in one transaction (`state` is nil when there is no such task). The row is
    /// locked (FOR UPDATE, waiting for another transaction that holds it) from the read to the write.
    package func transition<Outcome: Sendable & Equatable>(
        id: String, _ decide: @escaping @Sendable (_ state: TaskState?) -> TaskPlan<Outcome>
    ) async throws -> Outcome {
        let logger = self.logger
        return try await transaction { connection in
            var state: TaskState?
            let rows = try await connection.query("SELECT \(unescaped: Self.stateColumns) FROM tasks WHERE id = \(id) FOR UPDATE", logger: logger)
            for try await row in rows { state = try Self.state(row.makeRandomAccess()) }
            return try await Self.apply(decide(state), id: id, connection, logger: logger)
        }
    }

    /// The same transition on every matching row, in one transaction.
    private func transitionEach(
        where condition: String, _ bindings: [any PostgresEncodable & Sendable],
        _ decide: @escaping @Sendable (TaskState) -> TaskPlan<RequeueOutcome>
    ) async throws -> [String: RequeueOutcome] {
        let logger = self.logger
        return try await transaction { connection in
            var outcomes: [String: RequeueOutcome] = [:]
            for (id, state) in try await Self.states(connection, where: condition, bindings, logger: logger) {
                outcomes[id] = try await Self.apply(decide(state), id: id, connection, logger: logger)
            }
            return outcomes
        }
    }

    /// Writes a plan's change and sends its notifications, delivered at commit so that a node that wakes
    /// on one already sees the row.
    package static func apply<Outcome>(_ plan: TaskPlan<Outcome>, id: String, _ connection: PostgresConnection, logger: Logger) async throws -> Outcome {
        switch plan.change {
        case .none:
            break
        case .delete:
            try await connection.query("DELETE FROM tasks WHERE id = \(id)", logger: logger)
        case .update(let state, let result):
            try await connection.query(
                """
                UPDATE tasks SET status = \(state.status.rawValue), owner_key_hash = \(state.owner), attempts = \(state.attempts),
                    cancel_requested = \(state.cancelRequested), lease_node = \(state.holder),
                    lease_expires_at = \(state.leaseExpiresAt?.timeIntervalSince1970),
                    started_at = \(state.startedAt?.timeIntervalSince1970), finished_at = \(state.finishedAt?.timeIntervalSince1970),
                    reason = \(state.reason), progress_step = \(state.progressStep), progress_total = \(state.progressTotal),
                    video_expired = \(state.videoExpired)
                WHERE id = \(id)
                """,
                logger: logger
            )
            if let result {
                try await connection.query(
                    """
                    UPDATE tasks SET video_name = \(result.videoName), result_width = \(result.width),
                        result_height = \(result.height), result_frames = \(result.numFrames), result_fps = \(result.fps),
                        inference_seconds = \(result.inferenceSeconds), encode_seconds = \(result.encodeSeconds),
                        result_infer_steps = \(result.inferSteps), result_guidance_scale = \(result.guidanceScale)
                    WHERE id = \(id)
                    """,
                    logger: logger
                )
            }
        }
        for effect in plan.effects.sorted(by: { "\($0)" < "\($1)" }) {
            switch effect {
            case .taskQueued: try await notify(connection, "queued", logger: logger)
            case .stopRequested: try await notify(connection, "cancel", logger: logger)
            }
        }
        return plan.outcome
    }

    public func tasksWithVideosFinished(before: Date) async throws -> [TaskRecord] {
        try await withDeadline {
            try await Self.records(
                client.query(
                    """
                    SELECT * FROM tasks
                    WHERE status = 'Succeed' AND NOT video_expired AND finished_at < \(before.timeIntervalSince1970)
                    ORDER BY finished_at
                    """,
                    logger: logger
                )
            )
        }
    }

    @discardableResult
    public func markVideoExpired(id: String) async throws -> Bool {
        try await transition(id: id) { state in state.map(TaskStateMachine.expireVideo) ?? TaskPlan(false) }
    }

    public func deleteTasks(finishedBefore: Date) async throws -> [TaskRecord] {
        try await withDeadline {
            try await Self.records(
                client.query(
                    """
                    DELETE FROM tasks
                    WHERE status IN ('Succeed', 'Failed', 'Cancelled') AND finished_at < \(finishedBefore.timeIntervalSince1970)
                    RETURNING *
                    """,
                    logger: logger
                )
            )
        }
    }

    public func referencedFileNames() async throws -> Set<String> {
        try await withDeadline {
            var names = Set<String>()
            let rows = try await client.query("SELECT input_key, video_name FROM tasks", logger: logger)
            for try await (input, video) in rows.decode((String, String?).self) {
                names.insert(input)
                if let video { names.insert("\(video).mp4") }
            }
            return names
        }
    }

    public func ping() async throws {
        try await withDeadline { try await client.query("SELECT 1", logger: logger) }
    }

    private static func notify(_ connection: PostgresConnection, _ event: String, logger: Logger) async throws {
        // NOTIFY takes no bind parameters; pg_notify does. Delivered at commit, so a listener that wakes
        // on it already sees the row.
        try await connection.query("SELECT pg_notify(\(notificationChannel), \(event))", logger: logger)
    }

    /// One transaction on a pooled connection. PostgresNIO wraps whatever the body throws; callers get the
    /// body's own error back (a `QueueFullError` must reach the submit as itself).
    package func transaction<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await withDeadline {
            do {
                return try await client.withTransaction(logger: logger) { connection in try await body(connection) }
            } catch let error as PostgresTransactionError {
                throw error.beginError ?? error.closureError ?? error.commitError ?? error
            }
        }
    }

    /// A call that cannot get an answer within `timeout` throws `StoreUnavailable` instead of waiting: the
    /// pool would otherwise hold it while it keeps trying to reconnect, and a submit would hang with it.
    /// Errors that say the server cannot be reached, or is shutting down, become `StoreUnavailable` too;
    /// errors in a statement stay what they are.
    ///
    /// The call runs in a task of its own that is cancelled, not awaited, once the time is up: a task
    /// group would wait for it, and an operation that does not heed cancellation (a request parked in the
    /// pool while the server is away) would then hold the caller, the dispatcher's loop included, for as
    /// long as the outage lasts.
    package func withDeadline<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let timeout = self.timeout
        let endpoint = self.endpoint
        let work = Task { try await body() }
        let outcome = FirstOutcome<T>()
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, any Error>, Never>) in
                outcome.setContinuation(continuation)
                let timer = Task {
                    try await Task.sleep(for: timeout)
                    outcome.resolve(.failure(StoreUnavailable(reason: "no answer from \(endpoint) within \(timeout)")))
                }
                Task {
                    let result = await work.result
                    timer.cancel()
                    outcome.resolve(result)
                }
            }
        } onCancel: {
            work.cancel()
        }
        work.cancel()
        do {
            return try result.get()
        } catch let error as PSQLError where Self.isUnavailable(error) {
            throw StoreUnavailable(reason: "\(endpoint): \(Self.describe(error))")
        }
    }

    package static func isUnavailable(_ error: PSQLError) -> Bool {
        guard let state = error.serverInfo?[.sqlState] else {
            // No answer from a server at all: the connection failed, closed, or never came up.
            return true
        }
        // 08: connection exception; 57: operator intervention (shutting down, cannot connect now);
        // 53: insufficient resources (too many connections); 55000 is what a new connection gets from a
        // database closed to connections for maintenance.
        return state.hasPrefix("08") || state.hasPrefix("57") || state.hasPrefix("53") || state == "55000"
    }

    // MARK: Rows

    private static func single<T: PostgresDecodable & Sendable>(_ type: T.Type, _ rows: PostgresRowSequence) async throws -> T? {
        var value: T?
        for try await decoded in rows.decode(T.self) where value == nil { value = decoded }
        return value
    }

    private static func records(_ rows: PostgresRowSequence) async throws -> [TaskRecord] {
        var records: [TaskRecord] = []
        for try await row in rows { records.append(try record(row.makeRandomAccess())) }
        return records
    }

    package static func record(_ row: PostgresRandomAccessRow) throws -> TaskRecord {
        let parameters = TaskParameters(
            model: try row["model"].decode(String.self),
            prompt: try row["prompt"].decode(String.self),
            negativePrompt: try row["negative_prompt"].decode(String.self),
            width: try row["width"].decode(Int.self),
            height: try row["height"].decode(Int.self),
            numFrames: try row["num_frames"].decode(Int.self),
            guidanceScale: try row["guidance_scale"].decode(Double.self),
            inferSteps: try row["infer_steps"].decode(Int.self),
            seed: try row["seed"].decode(Int.self),
            guidanceScale2: try row["guidance_scale_2"].decode(Double?.self)
        )
        var record = TaskRecord(
            id: try row["id"].decode(String.self),
            ownerKeyHash: try row["owner_key_hash"].decode(String.self),
            parameters: parameters,
            inputKey: try row["input_key"].decode(String.self),
            intake: IntakeTimings(
                fetch: try row["fetch_seconds"].decode(Double.self),
                decode: try row["decode_seconds"].decode(Double.self),
                encode: try row["png_seconds"].decode(Double.self)
            ),
            createdAt: Date(timeIntervalSince1970: try row["created_at"].decode(Double.self))
        )
        record.status = TaskStatus(rawValue: try row["status"].decode(String.self)) ?? .failed
        record.reason = try row["reason"].decode(String?.self)
        record.attempts = try row["attempts"].decode(Int.self)
        record.cancelRequested = try row["cancel_requested"].decode(Bool.self)
        record.progressStep = try row["progress_step"].decode(Int?.self)
        record.progressTotal = try row["progress_total"].decode(Int?.self)
        record.videoExpired = try row["video_expired"].decode(Bool.self)
        if record.status == .inProgress, let node = try row["lease_node"].decode(String?.self),
            let expires = try row["lease_expires_at"].decode(Double?.self)
        {
            record.lease = Lease(node: node, expiresAt: Date(timeIntervalSince1970: expires))
        }
        record.startedAt = try row["started_at"].decode(Double?.self).map(Date.init(timeIntervalSince1970:))
        record.finishedAt = try row["finished_at"].decode(Double?.self).map(Date.init(timeIntervalSince1970:))
        record.lastInputKey = try row["last_input_key"].decode(String?.self)
        record.loras = TaskLoRA.fromStored(try row["loras"].decode(String?.self))
        record.webhook = WebhookSubscription(
            url: try row["webhook_url"].decode(String?.self),
            storedEvents: try row["webhook_events"].decode(String?.self)
        )
        if let videoName = try row["video_name"].decode(String?.self) {
            record.result = TaskResult(
                videoName: videoName,
                width: try row["result_width"].decode(Int.self),
                height: try row["result_height"].decode(Int.self),
                numFrames: try row["result_frames"].decode(Int.self),
                fps: try row["result_fps"].decode(Int.self),
                inferenceSeconds: try row["inference_seconds"].decode(Double.self),
                encodeSeconds: try row["encode_seconds"].decode(Double?.self) ?? 0,
                inferSteps: try row["result_infer_steps"].decode(Int?.self),
                guidanceScale: try row["result_guidance_scale"].decode(Double?.self)
            )
        }
        return record
    }

    /// PostgresNIO hides an error's details from its description so they do not reach end users; this
    /// message goes to the operator, who needs them.
    package static func describe(_ error: any Error) -> String {
        guard let error = error as? PSQLError else { return String(describing: error) }
        if let message = error.serverInfo?[.message] {
            return error.serverInfo?[.sqlState].map { "\(message) (SQLSTATE \($0))" } ?? message
        }
        if let underlying = error.underlying { return String(describing: underlying) }
        return "\(error.code)"
    }
}

/// The store could not start: the database was unreachable, refused the login, or could not be migrated.
public struct PostgresStoreUnavailable: Error, CustomStringConvertible {
    public var endpoint: PostgresEndpoint
    public var reason: String
    public var description: String { "could not use the PostgreSQL database \(endpoint): \(reason)" }

    package init(endpoint: PostgresEndpoint, reason: String) {
        self.endpoint = endpoint
        self.reason = reason
    }
}

/// Where the PostgreSQL store lives, read from a `postgres://user:password@host:port/database` URL.
/// `sslmode` (a query parameter) follows libpq: `disable`, `prefer` (the default) and `require` encrypt
/// without checking the server's certificate, `verify-ca` checks it, `verify-full` checks the host name too.
public struct PostgresEndpoint: Sendable, CustomStringConvertible {
    public enum TLSMode: String, Sendable {
        case disable
        case prefer
        case require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tlsMode: TLSMode

    public init(url: String) throws {
        guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme?.lowercased())
        else { throw ConfigurationProblem("the database URL is not a postgres:// URL") }
        guard let host = components.host, !host.isEmpty else {
            throw ConfigurationProblem("the database URL names no host (postgres://user:password@host:port/database)")
        }
        self.host = host
        self.port = components.port ?? 5432
        self.username = components.user.flatMap { $0.isEmpty ? nil : $0 } ?? "postgres"
        self.password = components.password
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        self.database = path.isEmpty ? username : path
        let mode = components.queryItems?.first(where: { $0.name == "sslmode" })?.value ?? TLSMode.prefer.rawValue
        guard let tlsMode = TLSMode(rawValue: mode) else {
            throw ConfigurationProblem("the database URL's sslmode=\(mode) is not one of disable, prefer, require, verify-ca, verify-full")
        }
        self.tlsMode = tlsMode
    }

    /// Never shows the password: this goes into logs and error messages.
    public var description: String { "\(username)@\(host):\(port)/\(database)" }

    func with(database: String) -> PostgresEndpoint {
        var copy = self
        copy.database = database
        return copy
    }

    private var tlsConfiguration: TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        switch tlsMode {
        case .disable, .prefer, .require: tls.certificateVerification = .none
        case .verifyCA: tls.certificateVerification = .noHostnameVerification
        case .verifyFull: tls.certificateVerification = .fullVerification
        }
        return tls
    }

    func clientConfiguration() -> PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS =
            switch tlsMode {
            case .disable: .disable
            case .prefer: .prefer(tlsConfiguration)
            case .require, .verifyCA, .verifyFull: .require(tlsConfiguration)
            }
        return PostgresClient.Configuration(
            host: host,
            port: port,
            username: username,
            password: password,
            database: database,
            tls: tls
        )
    }

    func connectionConfiguration() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS =
            switch tlsMode {
            case .disable: .disable
            case .prefer: .prefer(try NIOSSLContext(configuration: tlsConfiguration))
            case .require, .verifyCA, .verifyFull: .require(try NIOSSLContext(configuration: tlsConfiguration))
            }
        return PostgresConnection.Configuration(
            host: host,
            port: port,
            username: username,
            password: password,
            database: database,
            tls: tls
        )
    }
}

/// Hands the first of several results to one waiting continuation; later ones are dropped.
private final class FirstOutcome<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Result<T, any Error>, Never>?
        var early: Result<T, any Error>?
        var resolved = false
    }

    private let state = Mutex(State())

    func setContinuation(_ continuation: CheckedContinuation<Result<T, any Error>, Never>) {
        let early: Result<T, any Error>? = state.withLock { state in
            if let early = state.early {
                state.early = nil
                return early
            }
            state.continuation = continuation
            return nil
        }
        if let early { continuation.resume(returning: early) }
    }

    func resolve(_ result: Result<T, any Error>) {
        let continuation: CheckedContinuation<Result<T, any Error>, Never>? = state.withLock { state in
            guard !state.resolved else { return nil }
            state.resolved = true
            guard let continuation = state.continuation else {
                state.early = result
                return nil
            }
            state.continuation = nil
            return continuation
        }
        continuation?.resume(returning: result)
    }
}
