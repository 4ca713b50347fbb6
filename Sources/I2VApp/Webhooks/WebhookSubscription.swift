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

extension FieldReader {
    /// `webhook_url` and `webhook_events`, both optional: nil when there is no webhook or when a problem was
    /// recorded in `issues`. The events are a JSON array of names, or one string of comma-separated names
    /// (how a multipart form sends them).
    mutating func webhook() -> WebhookSubscription? {
        let urlValue = fields["webhook_url"].flatMap { $0 == .null ? nil : $0 }
        let eventsValue = fields["webhook_events"].flatMap { $0 == .null ? nil : $0 }
        guard urlValue != nil else {
            if let eventsValue {
                issues.append(ValidationIssue("missing", field: "webhook_url", "webhook_events needs a webhook_url to deliver them to", input: eventsValue))
                return nil
            }
            return nil
        }
        let url: String?
        if case .string(let text) = urlValue, text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            // URL parsing lets CR, LF and other control characters through (delivery would percent-encode
            // them): a URL that holds one was pasted or built wrong, and it is refused rather than repaired.
            issues.append(
                ValidationIssue("url_parsing", field: "webhook_url", "Input should be a valid URL, without control characters (such as CR or LF)", input: urlValue)
            )
            url = nil
        } else {
            url = self.url("webhook_url")
        }
        var events = WebhookEvent.defaults
        if let eventsValue {
            guard let named = webhookEvents(eventsValue) else { return nil }
            events = named
        }
        guard let url else { return nil }
        return WebhookSubscription(url: url, events: events)
    }

    private mutating func webhookEvents(_ value: JSONValue) -> Set<WebhookEvent>? {
        let allowed = WebhookEvent.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", ")
        var names: [String] = []
        switch value {
        case .array(let items):
            for item in items {
                guard case .string(let name) = item else {
                    issues.append(ValidationIssue("string_type", field: "webhook_events", "Each event should be a string, one of \(allowed)", input: value))
                    return nil
                }
                names.append(name)
            }
        case .string(let list):
            names = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        default:
            issues.append(ValidationIssue("list_type", field: "webhook_events", "Input should be a list of events, of \(allowed)", input: value))
            return nil
        }
        var events = Set<WebhookEvent>()
        for name in names {
            guard let event = WebhookEvent(rawValue: name) else {
                issues.append(ValidationIssue("literal_error", field: "webhook_events", "Each event should be one of \(allowed), not '\(name)'", input: value))
                return nil
            }
            events.insert(event)
        }
        guard !events.isEmpty else {
            issues.append(ValidationIssue("too_short", field: "webhook_events", "List should name at least one event, of \(allowed)", input: value))
            return nil
        }
        return events
    }
}
