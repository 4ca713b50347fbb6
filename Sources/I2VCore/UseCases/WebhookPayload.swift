import Foundation

/// A delivery's body: `{"type":"video.completed","timestamp":"<ISO 8601>","data":<the /video/status body
/// with requestId>}`. `timestamp` is when the event happened (the task's start or end), not when it was sent.
package struct WebhookPayload: Encodable {
    package var type: String
    package var timestamp: String
    package var data: TaskStatusDocument

    /// Renders a task's event into the body every attempt sends.
    package static func renderer(publicURL: String) -> @Sendable (TaskRecord, WebhookEvent) throws -> String {
        { task, event in try render(task, event: event, publicURL: publicURL) }
    }

    /// Rendered once, when the event is recorded; every attempt then sends these bytes.
    package static func render(_ task: TaskRecord, event: WebhookEvent, publicURL: String, now: Date = Date()) throws -> String {
        let happened: Date =
            switch event {
            case .started: task.startedAt ?? now
            case .completed, .failed, .cancelled: task.finishedAt ?? now
            }
        let payload = WebhookPayload(
            type: event.type,
            timestamp: happened.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)),
            data: TaskStatusDocument(view: TaskView(task: task, queuePosition: nil), publicURL: publicURL, includeRequestID: true)
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(payload), as: UTF8.self)
    }

    package init(type: String, timestamp: String, data: TaskStatusDocument) {
        self.type = type
        self.timestamp = timestamp
        self.data = data
    }
}
