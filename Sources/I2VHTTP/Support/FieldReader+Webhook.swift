import Foundation
import I2VCore

extension FieldReader {
    /// `webhook_url` and `webhook_events`, both optional: nil when there is no webhook or when a problem was
    /// recorded in `issues`. The events are a JSON array of names, or one string of comma-separated names
    /// (how a multipart form sends them).
    package mutating func webhook() -> WebhookSubscription? {
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
                ValidationIssue(
                    "url_parsing", field: "webhook_url", "Input should be a valid URL, without control characters (such as CR or LF)", input: urlValue)
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
