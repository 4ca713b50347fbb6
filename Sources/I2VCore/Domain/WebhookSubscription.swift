import Foundation

/// What a webhook can report about a task.
public enum WebhookEvent: String, Sendable, Equatable, Hashable, CaseIterable, Comparable {
    case started
    case completed
    case failed
    case cancelled

    /// The events a subscription gets when it names none.
    public static let defaults: Set<WebhookEvent> = [.completed, .failed, .cancelled]

    /// The delivery's `type`.
    public var type: String { "video.\(rawValue)" }

    /// The event a task's final status is reported as.
    public init?(ending status: TaskStatus) {
        switch status {
        case .succeed: self = .completed
        case .failed: self = .failed
        case .cancelled: self = .cancelled
        case .inQueue, .inProgress: return nil
        }
    }

    public static func < (lhs: WebhookEvent, rhs: WebhookEvent) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// Where a task's events go, and which of them. Kept on the task's row from the submit on.
public struct WebhookSubscription: Sendable, Equatable, CustomDebugStringConvertible {
    public var url: String
    public var events: Set<WebhookEvent>

    public init(url: String, events: Set<WebhookEvent> = WebhookEvent.defaults) {
        self.url = url
        self.events = events
    }

    /// The events as the store keeps them: `completed,failed` (fixed order, so equal sets store alike).
    public var storedEvents: String { events.sorted().map(\.rawValue).joined(separator: ",") }

    /// The same text for the same subscription in every process (a `Set`'s order is not): what a request's
    /// fingerprint (idempotency keys) reads.
    public var debugDescription: String { "WebhookSubscription(\(url), \(storedEvents))" }

    /// Reads a stored row back; unknown names (from a later version) are skipped.
    public init?(url: String?, storedEvents: String?) {
        guard let url else { return nil }
        self.url = url
        self.events = Set((storedEvents ?? "").split(separator: ",").compactMap { WebhookEvent(rawValue: String($0)) })
    }
}

/// How one delivery attempt is counted in `/metrics` (`i2v_webhook_deliveries_total{outcome}`).
public enum WebhookDeliveryOutcome: String, Sendable, CaseIterable {
    case delivered
    /// Failed; another attempt is scheduled.
    case retry
    /// The URL failed the address rules at delivery time; another attempt is scheduled.
    case refused
    /// Failed with the retry window over: no more attempts.
    case gaveUp = "gave_up"
}
