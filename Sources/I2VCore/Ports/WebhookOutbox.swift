import Foundation

/// One delivery to make (or made): an event of a task, its body fixed when the event was recorded, so every
/// attempt sends the same bytes under the same `webhook-id`.
public struct WebhookMessage: Sendable, Equatable {
    public enum State: String, Sendable, Equatable {
        case pending
        case delivered
        case gaveUp = "gave_up"
    }

    /// `msg_<hex>`: the `webhook-id` of every attempt.
    public var id: String
    public var taskID: String
    public var event: WebhookEvent
    public var url: String
    public var body: String
    public var state: State
    /// Attempts claimed so far, the one in hand included.
    public var attempts: Int
    public var createdAt: Date
    /// When the next attempt is due; while a node is delivering it, when its claim runs out.
    public var nextAttemptAt: Date
    public var lastError: String?
    public var lastStatus: Int?
    public var finishedAt: Date?

    package init(
        id: String, taskID: String, event: WebhookEvent, url: String, body: String, state: State, attempts: Int, createdAt: Date, nextAttemptAt: Date,
        lastError: String? = nil, lastStatus: Int? = nil, finishedAt: Date? = nil
    ) {
        self.id = id
        self.taskID = taskID
        self.event = event
        self.url = url
        self.body = body
        self.state = state
        self.attempts = attempts
        self.createdAt = createdAt
        self.nextAttemptAt = nextAttemptAt
        self.lastError = lastError
        self.lastStatus = lastStatus
        self.finishedAt = finishedAt
    }
}

/// How one attempt ended, as the store records it.
public enum WebhookAttemptRecord: Sendable, Equatable {
    case delivered(status: Int)
    /// Try again at `at`.
    case retry(at: Date, error: String, status: Int?)
    /// No more attempts: the retry window is over.
    case gaveUp(error: String, status: Int?)
}

/// What settling a task's events before its deletion did.
public enum WebhookDeletionSettlement: Sendable, Equatable {
    /// The task has no webhook, or nothing to record.
    case nothing
    /// Its pending events are in the outbox; a queued task was cancelled first so that its `cancelled`
    /// event tells the truth.
    case recorded(cancelledQueued: Bool)
}

/// The durable outbox of webhook deliveries, kept in the task store next to the tasks (each method is one
/// transaction). Tasks carry their subscription; `collectWebhookEvents` turns the events that happened
/// into outbox messages and marks them recorded in the same transaction, so no code that changes a task's
/// state needs to know about webhooks, and a crash loses nothing.
public protocol WebhookOutbox: Sendable {
    /// Finds up to `limit` tasks whose subscribed events happened but are not in the outbox yet, adds a
    /// message for each event (body from `render`) and marks the task. The events a task is not
    /// subscribed to are marked without a message. Returns the messages added. With several API nodes,
    /// each event is recorded by exactly one of them.
    func collectWebhookEvents(
        limit: Int,
        now: Date,
        render: @escaping @Sendable (TaskRecord, WebhookEvent) throws -> String
    ) async throws -> [WebhookMessage]

    /// Before an owner's task is deleted: a queued task with a webhook is cancelled, and the events it has
    /// pending (the cancel included) are recorded, so the deletion does not swallow them.
    func settleWebhookEventsBeforeDeletion(
        id: String,
        ownerKeyHash: String,
        now: Date,
        render: @escaping @Sendable (TaskRecord, WebhookEvent) throws -> String
    ) async throws -> WebhookDeletionSettlement

    /// Claims up to `limit` pending messages that are due, for `claim`: no other caller gets them until it
    /// runs out. Each claim counts an attempt.
    func claimWebhookMessages(limit: Int, now: Date, claim: Duration) async throws -> [WebhookMessage]

    /// Records how the attempt `attempt` of a message ended. False when the claim was lost (it ran out and
    /// another node took the message): nothing changed.
    @discardableResult
    func recordWebhookAttempt(id: String, attempt: Int, outcome: WebhookAttemptRecord, now: Date) async throws -> Bool

    /// Messages waiting for a (next) attempt.
    func pendingWebhookMessageCount() async throws -> Int

    /// Deletes delivered and given-up messages that finished before `before`; returns how many.
    func pruneWebhookMessages(finishedBefore: Date) async throws -> Int

    /// A task's messages, oldest first (operators and tests).
    func webhookMessages(taskID: String) async throws -> [WebhookMessage]
}

/// The choices both stores make alike when they record a task's events.
package enum WebhookEventRules {
    /// The reason a queued task deleted by its owner is cancelled with.
    package static let deletedReason = "deleted by the client"

    /// What to record for `task` now: the messages to add (its subscribed events that happened and are not
    /// recorded yet) and the marks to set. A started event is due once the task has started (or ended after
    /// running); an ending event once it has ended. An event the task is not subscribed to is only marked,
    /// and so is the start of a task that ended without starting (cancelled while queued): either way the
    /// task leaves the index of tasks with something to record.
    package static func plan(_ task: TaskRecord, startedRecorded: Bool, endRecorded: Bool) -> (events: [WebhookEvent], markStarted: Bool, markEnd: Bool) {
        guard let webhook = task.webhook else { return ([], !startedRecorded, !endRecorded) }
        var events: [WebhookEvent] = []
        var markStarted = false
        var markEnd = false
        if !startedRecorded, task.startedAt != nil || task.status.isTerminal {
            if task.startedAt != nil, webhook.events.contains(.started) { events.append(.started) }
            markStarted = true
        }
        if !endRecorded, let ending = WebhookEvent(ending: task.status) {
            if webhook.events.contains(ending) { events.append(ending) }
            markEnd = true
        }
        return (events, markStarted, markEnd)
    }

    package static func newMessageID() -> String { "msg_" + RandomIdentifier.hex128() }
}

extension TaskRecord {
    /// Whether the subscription has a start to report: stored with the task so that a task without one
    /// never enters the index of tasks with events to record while it runs.
    package var webhookWantsStarted: Bool { webhook?.events.contains(.started) ?? false }

    /// Whether the subscription has any ending to report.
    package var webhookWantsEnding: Bool { !(webhook?.events.isDisjoint(with: [.completed, .failed, .cancelled]) ?? true) }
}

/// What `DeleteTask` does for webhooks: the deleted task's pending events (a queued task's cancel
/// included) are recorded before its row goes.
package struct WebhookDeletionHook: Sendable {
    package let outbox: any WebhookOutbox
    package let publicURL: String

    package func settle(id: String, owner: String) async throws -> WebhookDeletionSettlement {
        try await outbox.settleWebhookEventsBeforeDeletion(
            id: id,
            ownerKeyHash: owner,
            now: Date(),
            render: WebhookPayload.renderer(publicURL: publicURL)
        )
    }

    package init(outbox: any WebhookOutbox, publicURL: String) {
        self.outbox = outbox
        self.publicURL = publicURL
    }
}
